"""Scripted pieces for the eval tests: a generator that answers by problem, and a fake sandbox.

Also runnable as a script (`python eval_scripts.py MODEL_DIR PROBLEMS RUN_DIR [SLEEP_S]`): one
evaluation with a scripted model, used by the resume test, which kills it mid-run.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Sequence

from scripted_generator import ScriptedGenerator
from tirl.sandbox import ExecResult


class ByProblemGenerator(ScriptedGenerator):
    """Writes `scripts[problem_text][i]` for the i-th sample of a problem seen in this process (samples
    are met in order); a script given as a plain string is used for every sample."""

    def __init__(self, tokenizer, scripts: dict[str, Sequence[str] | str], sleep_s: float = 0.0):
        self.scripts, self.sleep_s = scripts, sleep_s
        self.assigned: dict = {}
        self.count: Counter = Counter()
        super().__init__(lambda key: self.assigned[key], tokenizer)

    def generate(self, requests, params):
        for r in requests:
            if r.key not in self.assigned:
                text = self.tokenizer.decode(r.token_ids)
                problem = next(p for p in self.scripts if p in text)
                script = self.scripts[problem]
                chosen = script if isinstance(script, str) else script[self.count[problem]]
                self.count[problem] += 1
                self.assigned[r.key] = self.tokenizer.encode(chosen, add_special_tokens=False)
        time.sleep(self.sleep_s)
        return super().generate(requests, params)


class FakeSandbox:
    """Runs nothing: `print(...)` snippets answer with the evaluated argument; `raise` snippets fail."""

    def __init__(self):
        self.codes: list[str] = []

    def run_batch(self, codes, timeout=None):
        out = []
        for code in codes:
            self.codes.append(code)
            if "raise" in code:
                out.append(ExecResult("error", stderr="Traceback ...\nValueError: boom", exit_code=1))
            else:
                value = eval(code.strip()[len("print("):-1], {})  # test-only: our own literal snippets
                out.append(ExecResult("ok", stdout=f"{value}\n", exit_code=0))
        return out


def code(snippet: str) -> str:
    return f"<code>\n```python\n{snippet}\n```\n</code>"


def answer(value: str) -> str:
    return f"<answer>\n\\boxed{{{value}}}\n</answer>"


def resume_scripts(n_problems: int) -> tuple[list[dict], dict[str, str]]:
    """Problems `k*7` for k = 1..n; odd k answered right (with a code call), even k wrong."""
    rows, scripts = [], {}
    for k in range(1, n_problems + 1):
        q = f"What is {k} times 7?"
        rows.append({"id": f"q{k}", "problem": q, "answer": str(7 * k)})
        scripts[q] = (code(f"print({k}*7)") + answer(str(7 * k))) if k % 2 else answer(str(7 * k + 1))
    return rows, scripts


def main(model_dir: str, problems: str, run_dir: str, sleep_s: float = 0.0) -> None:
    import json

    import torch

    from tirl.eval import EvalConfig, evaluate, load_benchmark_file
    from tirl.rollout import RolloutConfig
    from tirl.models import load_tokenizer

    torch.set_num_threads(1)
    tok = load_tokenizer(model_dir)
    rows = [json.loads(line) for line in open(problems)]
    _, scripts = resume_scripts(len(rows))
    gen = ByProblemGenerator(tok, scripts, sleep_s=sleep_s)
    evaluate(gen, tok, FakeSandbox(), {"tiny": load_benchmark_file(problems)},
             EvalConfig(rollout=RolloutConfig(n=2, max_new_tokens=64, max_tool_calls=8, temperature=0.0, seed=0), batch_size=1), run_dir, model_id="scripted", show=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
