"""Data-parallel update with 2 gloo ranks: equal to the single-process update, ranks bit-equal."""

import torch
import torch.multiprocessing as mp
from transformers import Qwen2Config, Qwen2ForCausalLM

from tirl.rollout import Trajectory
from tirl.train import rl_update as U
from tirl.train.batch import make_batch


def _model():
    cfg = Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


def _batch(model):
    g = torch.Generator().manual_seed(1)
    trajs = []
    for i in range(10):  # 10 rows: mini-batches of 4 split 2/2, the last of 2 split 1/1
        p = torch.randint(1, 40, (3 + i % 3,), generator=g).tolist()
        r = torch.randint(1, 40, (6 + i % 4,), generator=g).tolist()
        mask = [1, 1, 0, 0, 1] + [1] * (len(r) - 5)
        trajs.append(Trajectory(p, r, mask, [-1.0 if m else 0.0 for m in mask], group_index=i // 2, sample_index=i % 2))
    batch = make_batch(trajs, pad_id=0)
    batch.old_logprobs, _ = U.score_batch(model, batch, 1.0, 4)
    algo = U.AlgoConfig(name="grpo")
    U.compute_advantages(batch, torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0]), algo, 2)
    return batch, algo


def _update(dp=None):
    torch.set_num_threads(1)
    model = _model()
    batch, algo = _batch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    m = U.policy_update(model, opt, sched, batch, list(range(10)), algo, temperature=1.0, mini_batch_size=4,
                        micro_batch_size=1, epochs=2, max_grad_norm=1.0, seq_len=16,
                        generator=torch.Generator().manual_seed(3), dp=dp)
    return model, m


def _rank(rank, world, init, out):
    from tirl.distributed.ddp import init_group

    dp = init_group(rank, world, init)
    model, m = _update(dp)
    torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}, "loss": m["loss/policy"]},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_and_each_other(tmp_path):
    mp.spawn(_rank, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    single, m = _update()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    before = _model().state_dict()
    for name, p in single.state_dict().items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name  # ranks bit-equal
        # The ranks sum the gradient in another order than one process; AdamW divides by sqrt(v), so
        # where a gradient is near 0 that rounding reaches ~1e-5 of a 1e-2 step (4e-6 measured on an AMX CPU).
        torch.testing.assert_close(ranks[0]["params"][name], p, rtol=0, atol=1e-5)
    assert any(not torch.equal(p, before[n]) for n, p in single.state_dict().items())  # the update did something
    assert abs(ranks[0]["loss"] - m["loss/policy"]) < 1e-6  # the summed per-rank losses are the global loss


def test_tirl_train_with_two_trainer_ranks_matches_one(tmp_path):
    """`distributed.trainer_workers=2` through `train_rl`: ranks are checked bit-equal after every update
    (the run would stop otherwise), the result matches one rank, and only rank 0 writes."""
    from pathlib import Path

    from safetensors.torch import load_file

    from tirl.config import load_config
    from tirl.train.checkpoint import latest_checkpoint
    from tirl.train.rl import RLConfig, train_rl

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke_grpo.yaml"
    params = {}
    for w in (1, 2):
        cfg = load_config(RLConfig, smoke, ["trainer.steps=2", "trainer.eval_size=2", "algorithm.entropy_coef=0.01",
                                            f"distributed.trainer_workers={w}"])
        train_rl(cfg, tmp_path / f"w{w}")
        params[w] = load_file(latest_checkpoint(tmp_path / f"w{w}") / "policy" / "model.safetensors")
    base = load_file(tmp_path / "w1" / "base_model" / "model.safetensors")
    assert any(not torch.equal(params[1][k], base[k]) for k in base)  # the steps did update
    for k in params[1]:
        torch.testing.assert_close(params[2][k], params[1][k], rtol=0, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "w2" / "checkpoints").iterdir()) == ["step-000002"]
    assert not [p for p in mp.active_children() if p.name.startswith("tirl-trainer-rank")]
