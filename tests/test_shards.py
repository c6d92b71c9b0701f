"""Shards of whole GRPO groups: sizes, seeds, order, and that the local backend with K shards equals
K separate rollouts put together (the property the Ray backend's equality rests on)."""

import dataclasses

import pytest

from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401
from tirl.distributed import cut_shards, shard_seed
from tirl.distributed.local import LocalBackend
from tirl.generation.hf import HFGenerator
from tirl.rollout import RolloutConfig, rollout


def test_shards_are_contiguous_whole_prompts_with_fixed_seeds():
    prompts = [[i] for i in range(7)]
    parts = cut_shards(prompts, 3, seed=10)
    assert [len(s.prompts) for s in parts] == [3, 2, 2]
    assert [s.start for s in parts] == [0, 3, 5]
    assert [p for s in parts for p in s.prompts] == [tuple(p) for p in prompts]
    assert [s.seed for s in parts] == [10, shard_seed(10, 1), shard_seed(10, 2)]
    assert cut_shards(prompts, 1, seed=10)[0].seed == 10  # one shard is the unsharded rollout
    assert len(cut_shards(prompts[:2], 4, seed=None)) == 2 and cut_shards(prompts, 2, None)[1].seed is None
    with pytest.raises(ValueError, match="rollout.shards"):
        cut_shards(prompts, 0, 1)


class _NoSandbox:
    def run_batch(self, codes, timeout=None):
        raise RuntimeError("no sandbox here")


def _prompts(tok):
    return [tok.encode(f"What is {a} times {b}?", add_special_tokens=False) for a, b in [(12, 34), (5, 6), (7, 8)]]


def test_one_shard_equals_the_plain_rollout(tiny_model, tiny_tokenizer):
    cfg = RolloutConfig(n=2, max_new_tokens=24, seed=5)
    gen = HFGenerator(tiny_model, tiny_tokenizer)
    plain = rollout(gen, _prompts(tiny_tokenizer), tiny_tokenizer, _NoSandbox(), "retool", cfg)
    local = LocalBackend(gen, tiny_tokenizer, _NoSandbox(), "retool").rollout(_prompts(tiny_tokenizer), cfg, 1)
    assert [t.to_dict() for t in local.trajectories] == [t.to_dict() for t in plain.trajectories]


def test_k_shards_locally_equal_k_separate_rollouts_in_order(tiny_model, tiny_tokenizer):
    cfg = RolloutConfig(n=2, max_new_tokens=24, seed=5)
    gen = HFGenerator(tiny_model, tiny_tokenizer)
    prompts = _prompts(tiny_tokenizer)
    merged = LocalBackend(gen, tiny_tokenizer, _NoSandbox(), "retool").rollout(prompts, cfg, 2)
    parts = cut_shards(prompts, 2, cfg.seed)
    alone = [rollout(gen, [list(p) for p in s.prompts], tiny_tokenizer, _NoSandbox(), "retool",
                     dataclasses.replace(cfg, seed=s.seed)) for s in parts]
    expect = [t.response_ids for r in alone for t in r.trajectories]
    assert [t.response_ids for t in merged.trajectories] == expect
    assert [(t.group_index, t.sample_index) for t in merged.trajectories] == [(g, s) for g in range(3) for s in range(2)]
    m = merged.metrics
    assert m["rollout/decode_tokens"] == sum(r.metrics["rollout/decode_tokens"] for r in alone)
    assert m["rollout/generated_tokens"] == sum(len(t.response_ids) for t in merged.trajectories)
    assert 0 < m["rollout/recompute_ratio"] <= 1.0 + 1e-9
