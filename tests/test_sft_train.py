"""`tirl sft`: loss falls, the model loads with from_pretrained and feeds `tirl train`, resume is exact."""

import json

import pytest
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tirl.config import load_config
from tirl.train.logger import read_metrics
from tirl.train.sft import SFTConfig, length_grouped_batches, train_sft

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tirl(*args):
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True,
                          timeout=600, env=os.environ.copy())


def test_smoke_sft_then_rl_from_its_model(tmp_path):
    run = tmp_path / "sft"
    r = _tirl("sft", str(CONFIGS / "smoke_sft.yaml"), "--run-dir", str(run))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 31))
    first, last = metrics[0]["loss/sft"], metrics[-1]["loss/sft"]
    assert last < 0.7 * first, (first, last)
    assert "eval/loss" in metrics[-1]
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.model_type == "qwen2"
    # The SFT output is a starting model for RL.
    rl = tmp_path / "rl"
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), f"model.path={run / 'model'}", "trainer.steps=1",
              "--run-dir", str(rl))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rl_summary = json.loads((rl / "summary.json").read_text())
    assert rl_summary["steps"] == 1
    # each stage records its own peak resident memory: at least the model and torch it loaded
    for summary in (json.loads((run / "summary.json").read_text()), rl_summary):
        assert summary["memory"]["peak_rss_mb"] > 100 and summary["memory"]["scope"] == "stage"


def _cfg(steps):
    return load_config(SFTConfig, CONFIGS / "smoke_sft.yaml",
                       [f"trainer.steps={steps}", "trainer.save_every=3", "data.task.train_size=64",
                        "trainer.optim.schedule=constant"])


def test_resume_is_exact(tmp_path):
    train_sft(_cfg(6), tmp_path / "a")
    train_sft(_cfg(3), tmp_path / "b")
    train_sft(_cfg(6), tmp_path / "b", resume=True)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "model")
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    la = [m["loss/sft"] for m in read_metrics(tmp_path / "a")]
    lb = [m["loss/sft"] for m in read_metrics(tmp_path / "b")]
    assert la == lb


def test_bad_trace_file_is_refused_with_file_and_line(tmp_path):
    bad = tmp_path / "traces.jsonl"
    good = {"messages": [{"role": "user", "content": "1+1?"},
                         {"role": "assistant", "content": "<answer>\n\\boxed{2}\n</answer>"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    r = _tirl("sft", str(CONFIGS / "smoke_sft.yaml"), f"data.train={bad}", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "traces.jsonl:2" in r.stderr and "--skip-invalid" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing half-written


@pytest.mark.parametrize("make,needle", [
    (lambda d: ["model.path=" + str(d / "no_such_model")], "does not exist (a local path"),
    (lambda d: [f"data.train={_touch(d / 'empty.jsonl')}"], "empty.jsonl: no training traces"),
])
def test_user_errors_are_one_line_on_stderr_and_leave_nothing(tmp_path, make, needle):
    # overrides after flags are accepted (issue 11): `tirl sft CFG --run-dir D key=value`
    r = _tirl("sft", str(CONFIGS / "smoke_sft.yaml"), "--run-dir", str(tmp_path / "run"), *make(tmp_path))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def _touch(path):
    path.write_text("")
    return path


def test_length_grouping_covers_every_example_once():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47, 9, 46, 10, 45]
    batches = length_grouped_batches(lengths, 2, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(12))
    # within a batch lengths are neighbours in sorted order, so padding stays small
    assert all(abs(lengths[b[0]] - lengths[b[-1]]) <= 3 for b in batches)
    assert batches == length_grouped_batches(lengths, 2, seed=0, epoch=0)


def test_eager_attention_trains_the_same_model_as_sdpa(tmp_path):
    # model.attn_implementation picks a kernel, not a different model: fp32 weights agree after training
    for impl in ("sdpa", "eager"):
        train_sft(load_config(SFTConfig, CONFIGS / "smoke_sft.yaml",
                              ["trainer.steps=4", "data.task.train_size=64", f"model.attn_implementation={impl}"]),
                  tmp_path / impl)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "sdpa" / "model")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "eager" / "model")
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4)
    # ...and a different kernel did run (the setting reached the model): the rounding differs somewhere
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_unknown_attention_kernel_is_refused_before_anything_is_written(tmp_path):
    cfg = load_config(SFTConfig, CONFIGS / "smoke_sft.yaml", ["model.attn_implementation=fast"])
    with pytest.raises(ValueError, match="model.attn_implementation must be one of eager, sdpa"):
        train_sft(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_held_out_traces_are_capped_at_eval_size():
    # A dev slice of 723 GSM8K traces, scored whole every eval_every steps, took longer than 10 steps.
    from tirl.formats import get_style
    from tirl.train.sft import SFTDataConfig, load_sft_traces

    style = get_style("retool")
    train, held = load_sft_traces(SFTDataConfig(eval_fraction=0.5, eval_size=3), style)
    train_all, every = load_sft_traces(SFTDataConfig(eval_fraction=0.5, eval_size=0), style)
    assert len(held) == 3 and held == every[:3] and len(every) > 3
    assert train == train_all  # the cap leaves the training traces alone
    with pytest.raises(ValueError, match="data.eval_size"):
        from tirl.train.sft import validate_sft
        cfg = SFTConfig()
        cfg.data.eval_size = -1
        validate_sft(cfg)
