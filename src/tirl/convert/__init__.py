"""`tirl convert`: rewrite text-only solutions into code-integrated SFT traces, then verify them.

    from tirl.convert.pipeline import convert_async
    summary = asyncio.run(convert_async(cfg, rewriter, sandbox, run_dir))

For each problem (`problem`, `solution`, `answer`, optional `id`) an LLM is asked (`tirl.convert.prompt`) to
move the computation of the solution into code blocks in the chosen tag style. The rewrite is then
verified, which is what makes the data trustworthy; a trace is accepted only if every check passes.
With `rules` set there is no LLM: `tirl.convert.rules` writes the trace from the solution's own marked
steps (GSM8K's calculator annotations, or one arithmetic expression per problem), each stated result
as the written output, and the same checks verify it; the text-only twin of every accepted item goes to
`accepted_text.jsonl` (the baseline arm's SFT data, on the same problems).

Checks, in order; the first that fails is the rejection `reason` (short code) with a `detail`:
* `no_steps` — (rules) the solution has no step the rules can turn into code.
* `truncated` — the LLM hit its token budget.
* `format` — unbalanced or stray tags (the `tirl.data.traces` parser), an empty code block, an
  unclosed `<code>`, no answer after the last code block or more than one `<answer>` (ReTool style),
  or a real output that contains the style's own tags (it would break the trace when re-read).
  Text after the first `</answer>` is dropped, not rejected: the rollout stops there too.
* `no_code` — fewer than `min_code_blocks` code blocks.
* `no_answer` — no `\\boxed{}` after the last code block.
* `code_error` — a block failed (error, timeout, memory, killed) and the trace does not show that
  failure and fix it. It *shows* the failure when its written output after that block looks like an
  error (a traceback or `SomethingError`), and *fixes* it when a later block runs cleanly; then the
  real error text is kept (ReTool's self-correction behaviour is worth teaching).
* `output_mismatch` — the written output disagrees with the real one where the reasoning can depend
  on it. Rule `numbers` (default): every number in the written output of a successful block must
  occur in the real output (equal as a decimal, or equal after rounding the real one to the written
  number of decimals: `3.14` matches `3.14159`); a written error where the code really ran is a
  mismatch too. Text differences (wording, spacing, order) are repaired, since the real output
  replaces the written one. Rule `values` (the default with `rules`): the written and real outputs
  hold the same numbers in the same order, equal up to float noise (relative 1e-9), so `24` matches
  `24.0` but a rounded `33.33` does not match `33.333333333333336`. Rule `exact`: whitespace-normalised
  text must be equal. Rule `none`: always replace. A block with no written output gets the real one inserted (nothing to compare).
* `wrong_answer` — the final answer does not match the reference (`tirl.rewards.grade_detailed`).

Execution (`exec_mode`): `fresh` (default) runs every block as a separate program, as `tirl.rollout`
and both papers do at RL time, so accepted traces only teach blocks that work there (a block that
uses an earlier block's variables fails with NameError and is rejected as `code_error`); the blocks
of one trace are independent, so they run concurrently. `session` runs them in order in one sandbox
session (globals persist) for users whose RL keeps state; then outputs depend on all earlier blocks.

Outputs are rendered as the rollout renders them (`format_exec_result` with `error_lines`, then capped
at `max_output_chars`), so SFT teaches what RL will show.

Files in the run directory: `accepted.jsonl` (ReTool-SFT rows: `messages` = [system, user problem,
assistant trace], `answer`, `convert` stats; `tirl.data.load_traces` reads them), with `rules`
`accepted_text.jsonl` (the same rows with the text-only twin, `convert.text_twin` true), `rejected.jsonl`
(`id`, `reason`, `detail`, the problem and the raw rewrite), `summary.json` (counts by reason over
both files, and this run's throughput), `settings.json` (the settings that decide acceptance; a
re-run with other ones is refused rather than mixing two rules in one file). Every record is
appended, flushed and fsync'ed. A re-run skips ids present in either file (a torn last line is cut off and its item
redone). Failures that are not the trace's fault (LLM unreachable, sandbox failure) write nothing, are
counted in `summary.json` under `infra_errors`, and are retried by the next run.

Not covered: several rewrites per problem (sampling until one passes), judging whether the code
really does the computation (a trace may print a hard-coded number), multi-turn rewrites that feed
the real output back to the LLM.

Modules: `config` (`ConvertConfig`), `items` (the input rows), `prompt` (what the LLM is asked),
`llm` (who rewrites), `rules` (rewriting without an LLM), `verify` (the checks on one rewrite), `pipeline` (the run directory and the
loop), `command` (`tirl convert`). Nothing is imported here, so the command's `--help` stays light.
"""
