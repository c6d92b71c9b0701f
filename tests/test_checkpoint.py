"""Checkpoints are atomic and restore exactly; the metrics file survives a resume without duplicates."""

import random

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tirl.train.checkpoint import latest_checkpoint, load_state, save_checkpoint
from tirl.train.logger import MetricsLogger, read_metrics


def _tiny():
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


def test_roundtrip_restores_weights_optimizer_and_rng(tmp_path):
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    random.seed(7)
    torch.manual_seed(7)
    path = save_checkpoint(tmp_path, 5, {"model": model}, {"optimizer": opt.state_dict(), "data_pos": 40})
    expected = (random.random(), torch.rand(3))

    loaded = AutoModelForCausalLM.from_pretrained(path / "model")
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    state = load_state(path)
    assert state["step"] == 5 and state["data_pos"] == 40
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_half_written_checkpoints_are_never_picked_up(tmp_path):
    model = _tiny()
    save_checkpoint(tmp_path, 2, {"model": model}, {})
    # A kill during the save of step 4 leaves a temp dir; one during a copy, a dir without the marker.
    (tmp_path / "checkpoints" / ".tmp-step-000004-999").mkdir()
    (tmp_path / "checkpoints" / "step-000006").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000002"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_only_the_last_k_are_kept(tmp_path):
    model = _tiny()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": model}, {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000003"]


def test_metrics_truncate_on_resume(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(1, 6):
        log.log(step, {"loss": 1.0 / step, "nan": float("nan")})
    log.truncate_after(3)
    log.log(4, {"loss": 0.3})
    steps = [m["step"] for m in read_metrics(tmp_path)]
    assert steps == [1, 2, 3, 4]
    assert read_metrics(tmp_path)[0]["nan"] is None  # JSON has no NaN: an undefined figure is null
