"""Tag styles: how code and interpreter output are written, and where generation pauses.

Two styles ship, one per paper:

* ``RETOOL`` — the model writes ``<code>\\n```python\\n...\\n```\\n</code>``; generation stops at
  ``</code>``; the harness appends ``\\n<interpreter>\\n{output}\\n</interpreter>\\n\\n`` and resumes; the
  final answer is ``<answer>\\n\\boxed{...}\\n</answer>``.
* ``TORL`` — the model writes a ```` ```python ```` fence and then opens an ```` ```output ```` fence
  itself; generation stops at ```` ```output ````; the harness appends ``\\n{output}\\n```\\n``; the answer
  is the last ``\\boxed{}``.

A style is data (a frozen dataclass), so a config can define another one (``TagStyle.from_dict``).

The prompt rule lives here too, once: ``PromptConfig`` (the ``prompt`` section of every config) and
``render_messages`` / ``problem_prompt``, which SFT, RL rollouts, evaluation, conversion and serving
all call. The tokenizer is passed in (duck-typed), so this module still imports no torch.

Everything here is pure string work: no torch, no I/O. The stop string is part of what the model
sampled, so the harness never re-appends it (token-in/token-out: see ``tirl.rollout``).

Simplifications: code is the content of the last code block only (ReTool and ToRL both run each block
as a complete script); a ``<code>`` block without a ```` ```python ```` fence inside is taken verbatim.
Not covered: languages other than Python.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

# --- prompts -------------------------------------------------------------------------------------
# Written for this project in the spirit of each paper's instructions (same tags, same answer
# format); to reproduce a paper's exact wording, set `prompt_template` in the config.
RETOOL_SYSTEM_PROMPT = (
    "Solve the problem step by step. You may run Python code: write it as\n"
    "<code>\n```python\n# your code\n```\n</code>\n"
    "and its output will be returned to you inside <interpreter>...</interpreter>. "
    "Use code for any exact or lengthy computation. When you are done, give the final answer as\n"
    "<answer>\n\\boxed{...}\n</answer>"
)

TORL_PROMPT_TEMPLATE = (
    "The user asks a question and the assistant solves it, combining natural language reasoning "
    "with Python programs: a program goes in a ```python block, and its result comes back in a "
    "```output block.\n"
    "User: {problem}\nWork through the problem with reasoning and code, and put the final answer "
    "within \\boxed{{}}.\nAssistant:"
)


@dataclass(frozen=True)
class TagStyle:
    """How one paper writes code, interpreter output and the final answer."""

    name: str
    code_open: str
    """Text that opens a code block; the code starts right after it."""
    code_close: str
    """Text that closes the code itself (the fence), before `stop`."""
    stop: str
    """Stop string: when the response ends with it, the last code block is executed."""
    output_prefix: str
    """Appended by the harness after `stop`, before the interpreter output."""
    output_suffix: str
    """Appended after the interpreter output; generation then resumes."""
    answer_open: str = ""
    """Tag around the final answer (ReTool's `<answer>`); empty when the style has none."""
    answer_close: str = ""
    answer_required: bool = False
    """Grade only a `\\boxed{}` inside the answer tags (ReTool's rule); False = the last box anywhere."""
    system_prompt: str = ""
    """System message for chat models; empty when the style uses `prompt_template` alone."""
    prompt_template: str = "{problem}"
    """User-turn text (or the whole prompt for base models); `{problem}` is substituted."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TagStyle":
        allowed = {f.name for f in fields(cls)}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown tag-style field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        missing = {"name", "code_open", "code_close", "stop", "output_prefix", "output_suffix"} - set(d)
        if missing:
            raise ValueError(f"tag style is missing required field(s) {sorted(missing)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render_prompt(self, problem: str) -> str:
        return self.prompt_template.replace("{problem}", problem).replace("{{}}", "{}")

    def prompt_messages(self, problem: str) -> list[dict[str, str]]:
        """Chat messages of a problem's prompt: the system prompt (if any), then the user turn."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": self.render_prompt(problem)})
        return messages

    def wrap_output(self, output: str) -> str:
        """The exact text injected after a stop: prefix + output + suffix."""
        return f"{self.output_prefix}{output}{self.output_suffix}"

    def wrap_code(self, code: str) -> str:
        """How the model is expected to write `code` (used to build SFT traces), stop included."""
        return f"{self.code_open}{code.strip(chr(10))}{self.code_close}{self.stop}"

    def wrap_answer(self, answer: str) -> str:
        boxed = f"\\boxed{{{answer}}}"
        if self.answer_open:
            return f"{self.answer_open}{boxed}{self.answer_close}"
        return boxed


RETOOL = TagStyle(
    name="retool",
    code_open="<code>\n```python\n",
    code_close="\n```\n",
    stop="</code>",
    output_prefix="\n<interpreter>\n",
    output_suffix="\n</interpreter>\n\n",
    answer_open="<answer>\n",
    answer_close="\n</answer>",
    answer_required=True,
    system_prompt=RETOOL_SYSTEM_PROMPT,
)

TORL = TagStyle(
    name="torl",
    code_open="```python\n",
    code_close="\n```\n",
    stop="```output",
    output_prefix="\n",
    output_suffix="\n```\n",
    prompt_template=TORL_PROMPT_TEMPLATE,
)

# ToRL's fences, but code runs when its fence closes (no ```output needed). Instruction-tuned models
# that were never trained on the tool write ```python blocks yet never open an ```output fence
# themselves, so with TORL their code never runs; this variant exercises the tool loop on them.
TORL_FENCE = TagStyle(
    name="torl-fence",
    code_open="```python\n",
    code_close="\n",
    stop="```\n",
    output_prefix="```output\n",
    output_suffix="\n```\n",
    prompt_template=TORL_PROMPT_TEMPLATE,
)

STYLES: dict[str, TagStyle] = {"retool": RETOOL, "torl": TORL, "torl-fence": TORL_FENCE}


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """Messages as plain text for a model without a chat template: contents joined by blank lines."""
    return "\n\n".join(m["content"] for m in messages)


@dataclass
class PromptConfig:
    """How a problem becomes a prompt: the `prompt` section of every config (sft, train, eval, serve).

    Saved next to every checkpoint and SFT model (`tirl.json`), so `tirl eval` / `tirl serve` prompt
    a trained model exactly as it was trained unless told otherwise.
    """

    style: str = "retool"
    """Tag style: retool, torl or torl-fence (see `STYLES`)."""
    system_prompt: Optional[str] = None
    """Overrides the style's system prompt; "" = none (tiny models do not need one)."""
    prompt_template: Optional[str] = None
    """Overrides the style's user template (`{problem}` is substituted)."""
    chat: Optional[bool] = None
    """Use the tokenizer's chat template; None = when it has one."""


def make_style(cfg: PromptConfig) -> TagStyle:
    """The tag style a prompt config names, with its system prompt / template overrides applied."""
    style = get_style(cfg.style)
    changes: dict[str, Any] = {}
    if cfg.system_prompt is not None:
        changes["system_prompt"] = cfg.system_prompt
    if cfg.prompt_template is not None:
        changes["prompt_template"] = cfg.prompt_template
    return replace(style, **changes) if changes else style


def render_messages(tokenizer: Any, messages: list[dict[str, str]], chat: bool | None = None) -> str:
    """THE prompt rule: chat messages -> the text a model continues. Every caller goes through here
    (RL rollouts, evaluation, SFT tokenisation, conversion, serving).

    With a chat template (used when the tokenizer has one and `chat` is not False): the messages
    through `apply_chat_template(add_generation_prompt=True)`. Without: contents joined by blank lines
    (`plain_prompt`), the papers' base-model form.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        chat = has_template
    if not chat:
        return plain_prompt(messages)
    if not has_template:
        raise ValueError("prompt.chat is true but the tokenizer has no chat template "
                         "(set prompt.chat=false to use the plain paper template)")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def problem_prompt(tokenizer: Any, problem: str, style: TagStyle | str, chat: bool | None = None) -> str:
    """The prompt of one problem: the style's messages (`TagStyle.prompt_messages`) through `render_messages`."""
    return render_messages(tokenizer, get_style(style).prompt_messages(problem), chat)


def get_style(spec: str | dict[str, Any] | TagStyle) -> TagStyle:
    """A style by name (`retool`, `torl`), from a config dict, or passed through."""
    if isinstance(spec, TagStyle):
        return spec
    if isinstance(spec, str):
        try:
            return STYLES[spec.lower()]
        except KeyError:
            raise ValueError(f"unknown tag style {spec!r}; known: {sorted(STYLES)}") from None
    return TagStyle.from_dict(dict(spec))


# --- code extraction -----------------------------------------------------------------------------
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:\n)?```", re.DOTALL)


def ends_with_stop(text: str, style: TagStyle) -> bool:
    """True when the response has just closed a code block (the pause point)."""
    return text.rstrip(" \t").endswith(style.stop)


def _block_opener(style: TagStyle) -> str:
    # The first line of `code_open` (`<code>`, ```` ```python ````): a model may vary what follows it.
    return style.code_open.split("\n", 1)[0]


def find_closed_code(text: str, style: TagStyle) -> str | None:
    """The code of the block that `text` has just closed, or None when it has not closed one.

    `text` should be prompt + response: a prompt may end inside `code_open` (then the response
    holds only the rest of the block). Returns "" for an empty block (reported, not run).
    """
    if not ends_with_stop(text, style):
        return None
    body = text.rstrip(" \t")[: -len(style.stop)]
    opener = _block_opener(style)
    start = body.rfind(opener)
    if start < 0:
        return None
    block = body[start + len(opener):]
    if style.stop.startswith("```") and block.count("```") != style.code_close.count("```"):
        # The fence that stopped generation closed some other block (```text ... ```), not the
        # last python block, which already ran: nothing to run.
        return None
    return extract_code(block)


def extract_code(block: str) -> str:
    """The Python inside one code block's body (the text between the opener and the stop)."""
    fenced = _FENCE.findall(block)
    if fenced:
        return fenced[-1].strip("\n")
    # ToRL: the opening fence was the opener itself, so only the closing fence remains.
    end = block.rfind("```")
    return (block[:end] if end >= 0 else block).strip("\n")


def has_open_code(text: str, style: TagStyle) -> bool:
    """True when the last code block was opened but not closed (e.g. cut by the token budget)."""
    return text.rfind(_block_opener(style)) > text.rfind(style.stop)


# --- interpreter output --------------------------------------------------------------------------
ELISION = "\n...[{n} {unit} elided]...\n"


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and tail of `text` within `max_chars`, marking the elided middle."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    return text[:head] + ELISION.format(n=len(text) - max_chars, unit="chars") + text[-tail:]


def truncate_middle_tokens(text: str, max_tokens: int, tokenizer: Any) -> str:
    """Keep head and tail within `max_tokens` tokens of `tokenizer` (verl#4918: cut by tokens)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if max_tokens <= 0 or len(ids) <= max_tokens:
        return text
    head = max_tokens // 2
    tail = max_tokens - head
    mark = ELISION.format(n=len(ids) - max_tokens, unit="tokens")
    return tokenizer.decode(ids[:head]) + mark + tokenizer.decode(ids[-tail:])


def render_output(
    output: str,
    style: TagStyle,
    max_chars: int = 1024,
    tokenizer: Any = None,
    max_tokens: int = 0,
) -> str:
    """Interpreter output ready for re-injection: capped (characters, then tokens) and wrapped."""
    text = output.rstrip("\n")
    text = truncate_middle(text, max_chars)
    if tokenizer is not None and max_tokens > 0:
        text = truncate_middle_tokens(text, max_tokens, tokenizer)
    return style.wrap_output(text)


def format_exec_result(status: str, stdout: str, stderr: str, error_lines: int = 0) -> str:
    """What the model sees for one execution: stdout, or the error (ToRL keeps its last line).

    `error_lines=0` keeps the whole traceback; `1` is ToRL's last-line-only rule.
    """
    if status == "ok":
        return stdout if stdout.strip() else "(no output)"
    if status == "timeout":
        msg = "TimeoutError: execution exceeded the time limit"
    elif status == "memory":
        msg = "MemoryError: execution exceeded the memory limit"
    elif status == "output_limit":
        return stdout + "\n[output limit exceeded]"
    else:
        msg = stderr.strip() or f"Error: execution failed ({status})"
    if error_lines > 0:
        msg = "\n".join(msg.splitlines()[-error_lines:])
    return (stdout + msg) if stdout.strip() else msg


# --- answers -------------------------------------------------------------------------------------
_BOX_CMDS = ("\\boxed", "\\fbox")


def _read_braced(text: str, i: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[i] == '{', and the index after it."""
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
    return None  # unbalanced: not an answer


def _all_boxed(text: str) -> list[str]:
    found: list[tuple[int, str]] = []
    for cmd in _BOX_CMDS:
        start = 0
        while (i := text.find(cmd, start)) >= 0:
            j = i + len(cmd)
            start = j
            if j < len(text) and text[j].isalpha():
                continue  # e.g. \boxeds: another command
            while j < len(text) and text[j] in " \t":
                j += 1
            if j < len(text) and text[j] == "{":
                got = _read_braced(text, j)
                if got is not None:
                    found.append((i, got[0]))
            elif j > i + len(cmd):  # `\boxed 5`: one token after a space
                m = re.match(r"[^\s$}]+", text[j:])
                if m:
                    found.append((i, m.group(0)))
    found.sort(key=lambda t: t[0])
    return [s.strip() for _, s in found]


def extract_boxed(text: str) -> str | None:
    """The final answer: the last `\\boxed{}` / `\\fbox{}` (nested braces kept), preferring the
    last `<answer>` block when there is one. None when there is no box."""
    answers = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    for block in reversed(answers):
        boxes = _all_boxed(block)
        if boxes:
            return boxes[-1]
    boxes = _all_boxed(text)
    return boxes[-1] if boxes else None


def extract_answer(text: str, style: TagStyle) -> str | None:
    """The final answer under `style`'s rule: with `answer_required`, the last box inside the last
    `answer_open ... answer_close` block that has one (None without such a block); else `extract_boxed`."""
    if not (style.answer_required and style.answer_open):
        return extract_boxed(text)
    open_tag, close_tag = style.answer_open.strip(), style.answer_close.strip()
    blocks = re.findall(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), text, re.DOTALL)
    for block in reversed(blocks):
        boxes = _all_boxed(block)
        if boxes:
            return boxes[-1]
    return None


def extract_last_number(text: str) -> str | None:
    """Lenient fallback for evaluation only: the last number in the text."""
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?", text)
    return nums[-1].rstrip(",") if nums else None
