"""`ConvertConfig`: everything `tirl convert` needs besides the LLM and the sandbox (see `tirl.convert`)."""

from __future__ import annotations

from dataclasses import dataclass

REASONS = ("no_steps", "truncated", "format", "no_code", "no_answer", "code_error", "output_mismatch",
           "wrong_answer")
OUTPUT_CHECKS = ("numbers", "values", "exact", "none")
EXEC_MODES = ("fresh", "session")


@dataclass
class ConvertConfig:
    """Everything `tirl convert` needs besides the LLM and the sandbox; every field has a working default."""

    input: str = ""
    """Problems with text-only solutions: .jsonl, .json, .parquet, a saved dataset dir or a hub name."""
    problem_field: str = "problem"
    """Field holding the question."""
    solution_field: str = "solution"
    """Field holding the text-only solution to rewrite."""
    answer_field: str = "answer"
    """Reference answer; when the row has none, the last \\boxed{} of the solution is used."""
    id_field: str = "id"
    """Optional id; rows without one get `{file stem}-{row index}` (stable, so resume works)."""
    split: str = "train"
    """Split of a hub or saved dataset."""
    limit: int | None = None
    """Convert only the first N valid rows (a quick look before a long run)."""
    skip_invalid: bool = False
    """Skip bad input rows (counted) instead of refusing the file with file:line."""
    style: str = "retool"
    """Tag style of the traces (`retool` or `torl`): the style `tirl sft` will train."""
    exec_mode: str = "fresh"
    """`fresh`: each block its own program, as the rollout runs them; `session`: globals persist."""
    output_check: str | None = None
    """How written outputs are compared with real ones: `numbers`, `values`, `exact` or `none` (module
    docstring); None = `numbers` for an LLM's rewrite, `values` for `rules` (every output must equal the
    solution's stated result)."""
    rules: str = ""
    """Rewrite by rules instead of an LLM (`tirl.convert.rules`): `calculator` (GSM8K's `<<48/2=24>>`
    annotations) or `equation` (the solution field holds one arithmetic expression, e.g. MAWPS's
    `equation`); "" = the LLM rewrite. Rules also write `accepted_text.jsonl`, the text-only twins."""
    layout: str = "step"
    """Rules only: `step` = one code call per calculation; `program` = one program per problem."""
    number_format: str = "repr"
    """Rules only: `repr` = outputs as Python prints them (24.0 after a division); `plain` = a
    calculation that may give a float is printed with `:.12g` (24, 0.3)."""

    @property
    def check(self) -> str:
        """The output check in force (`output_check`, or its default for the rewriter in use)."""
        if self.output_check is not None:
            return self.output_check
        return "values" if self.rules else "numbers"
    min_code_blocks: int = 1
    """A trace with fewer code blocks teaches nothing about tools."""
    exec_timeout_s: float = 10.0
    """Wall-clock limit per block; a slower block is a failure (`code_error`)."""
    max_output_chars: int = 1024
    """Interpreter output kept per block (head and tail), as `tirl.rollout` caps it."""
    error_lines: int = 0
    """Traceback lines kept in an error output; 0 = all, 1 = ToRL's last line only. Match your RL."""
    concurrency: int = 8
    """Items in flight at once (LLM requests + their sandbox runs + grading)."""
    temperature: float = 0.7
    """Sampling temperature of the rewriting LLM; some diversity helps SFT data."""
    max_tokens: int = 4096
    """Token budget of one rewrite; a rewrite that hits it is rejected as `truncated`."""
    seed: int | None = None
    """Sampling seed sent to the LLM (reproducible rewrites on backends that honour it)."""
    prompt_file: str | None = None
    """Optional text file replacing the user prompt (`{problem}`, `{solution}`, `{format}`, `{execution}`, `{answer}`)."""
