"""The rewriting prompt of `tirl convert`: ask an LLM to turn a text-only solution into a trace whose
computation happens in code blocks, in one tag style.

Written for this project (ReTool's idea, our words). The prompt shows the exact tags of the chosen
style, asks for the expected interpreter output after every block (verification compares it with the
real output and replaces it, see `tirl.convert.verify`), and says how blocks run: as fresh programs
(`exec_mode="fresh"`, what `tirl.rollout` and both papers do, so each block must re-define what it
uses) or in one session (`exec_mode="session"`, variables persist).

`build_rewrite_messages(problem, solution, style, exec_mode)` returns chat messages `[system, user]`.
Not covered: few-shot examples (a user who wants them sets `ConvertConfig.prompt_file`, a text file
whose `{problem}`, `{solution}`, `{format}` and `{execution}` placeholders are filled in).
"""

from __future__ import annotations

from tirl.formats import TagStyle

SYSTEM = (
    "You rewrite math solutions so that a Python interpreter does the computation. You keep the "
    "reasoning of the original solution, in the same order and in the first person of a solver "
    "thinking aloud, but every calculation that is long, exact or error-prone (arithmetic with large "
    "numbers, algebra, counting, checking cases, solving equations) is done by a short Python program "
    "instead of by hand."
)

EXECUTION = {
    "fresh": "Every code block runs as a separate, fresh Python program: it sees nothing from earlier "
             "blocks, so define again every variable and function it needs, and import what it uses.",
    "session": "Code blocks run one after another in the same Python session: variables, functions and "
               "imports of earlier blocks are still defined.",
}

USER = """Rewrite the solution below as a step-by-step solution that uses Python code.

Format, exactly:
{format}

Rules:
- {execution}
- Each program prints what the next step of the reasoning needs (use print).
- Right after each code block, write the output you expect it to print, in the output format above. It
  will be checked against the real output, so only write what the program really prints.
- Continue the reasoning from that output. Do not invent numbers the program did not print.
- Use at least one code block. Write nothing after the final answer.
- Final answer: {answer}

Problem:
{problem}

Original solution:
{solution}

Your rewritten solution:"""


def format_description(style: TagStyle) -> str:
    """The style's code, output and answer syntax, shown literally."""
    code = style.wrap_code("# Python code\nprint(result)")
    out = style.wrap_output("the printed output")
    return f"{code}{out}".rstrip("\n")


def build_rewrite_messages(
    problem: str, solution: str, style: TagStyle, exec_mode: str = "fresh", template: str | None = None
) -> list[dict[str, str]]:
    """`[system, user]` chat messages asking to rewrite `solution` of `problem` in `style`."""
    if exec_mode not in EXECUTION:
        raise ValueError(f"exec_mode must be one of {sorted(EXECUTION)}, not {exec_mode!r}")
    fill = {
        "format": format_description(style),
        "execution": EXECUTION[exec_mode],
        "answer": style.wrap_answer("...").replace("\n", " "),
        "problem": problem.strip(),
        "solution": solution.strip(),
    }
    text = template if template is not None else USER
    for key, value in fill.items():  # not str.format: problems and code are full of braces
        text = text.replace("{" + key + "}", value)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
