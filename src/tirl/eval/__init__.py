"""Evaluation on math benchmarks: k samples per problem through the tool loop, graded, scored, resumable.

    problems = {"math500": load_benchmark("math500", data_dir="data")}
    summary = evaluate(generator, tokenizer, sandbox, problems, EvalConfig(rollout=RolloutConfig(n=4)), "runs/eval")

This is the one evaluation path: `tirl eval`, the trainer's held-out evaluation (`run_dir=None`: in
memory, nothing written) and `tirl demo` all call `evaluate`, so their figures come from the same code
(which is why this package sits below `tirl.train` in the layers). Its modules:

* `benchmarks` — benchmarks by name (`aime24`, `aime25`, `math500`: a local file or the dataset hub;
  `gsm8k`, `svamp`: shipped with tirl) and any problem file;
* `config` — `EvalConfig`: the same `prompt` and `rollout` sections as `tirl train`; `without_tool`;
* `loop` — `evaluate` and the record of one graded sample (`make_record`);
* `store` — `samples.jsonl` keyed for resume, and the settings check;
* `summary` — avg@k / pass@k / maj@k and tool use per benchmark and overall, `summary.json`; the
  with / without tool comparison (`tool_comparison`);
* `table` — the printed table; `command` — `tirl eval`.

Files in the run directory:
* `samples.jsonl` — one record per finished sample: benchmark, problem id, sample index, the
  response, extracted answer, correct, grade reason, finish reason, tool calls (code, status, output,
  token span), token counts. Appended, flushed and fsync'ed after every generation batch.
* `eval_config.json` — the settings that decide the samples (model, sampling, style, ...).
* `problems.jsonl`, `summary.json` — rewritten at the end from `samples.jsonl`.
* With `tirl eval --tool both`: `tool_on/` and `tool_off/` each hold the files above, and
  `comparison.json` the side-by-side figures.

Resume: see `store`; raising `n` is allowed (the new sample indices are added).

Records keep token counts, not token ids (32 samples x 500 problems x 16k tokens would be gigabytes);
the tool metrics need only counts and call spans. Not covered: per-sample generation backend modes
(the OpenAI backend's counts are in the summary), multiple reference answers.
"""

from tirl.eval.benchmarks import BENCHMARKS, Benchmark, load_benchmark, load_benchmark_file, split_by_source
from tirl.eval.config import EvalConfig, without_tool
from tirl.eval.loop import evaluate, make_record
from tirl.eval.store import SampleStore, check_settings
from tirl.rollout.episodes import code_ran, grade_trajectory

__all__ = [
    "BENCHMARKS", "Benchmark", "EvalConfig", "SampleStore", "check_settings", "code_ran", "evaluate",
    "grade_trajectory", "load_benchmark", "load_benchmark_file", "make_record", "split_by_source", "without_tool",
]
