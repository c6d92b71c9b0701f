"""The RL loop's refactors change no number: a few GRPO and PPO steps of the tiny model, from a fixed
seed, end at exactly the weights main's loop (before the producer/learner split) ended at.

The hashes were taken from main's `train_rl` on this project's CPU reference platform; float results
can differ between CPU kernels and torch versions, so elsewhere the test is skipped (and says why)
rather than failing on arithmetic it does not own. `test_async.py` holds what the asynchronous mode
promises instead (the staleness bound, whole updates only)."""

import hashlib
import platform
from pathlib import Path

import pytest
import torch

from cpu_flags import has_amx
from tirl.config import load_config
from tirl.train.rl import RLConfig, train_rl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# GRPO with an entropy bonus and a KL term (a random model earns no reward: these give every row a
# gradient), dynamic sampling (two rounds), the fused old log-probs; PPO with its critic, warm-up and
# the separate scoring pass.
RUNS = {
    "grpo": ("smoke_grpo.yaml", ["algorithm.entropy_coef=0.01", "algorithm.kl_coef=0.01",
                                 "algorithm.dynamic_sampling=true", "algorithm.dynamic_sampling_max_rounds=2"]),
    "ppo": ("smoke_ppo.yaml", ["algorithm.entropy_coef=0.01"]),
}
COMMON = ["trainer.steps=3", "trainer.save_every=0", "trainer.eval_size=1", "trainer.seed=3"]

# (torch version, machine, AMX or not) -> run -> sha256 of the final weights (policy, then critic), from
# main's loop. AMX: oneDNN and MKL pick other kernels on CPUs that have it, and float32 sums come out in
# another order (the same torch on an AMX machine gave other hashes for main's loop and for this one,
# equal to each other).
REFERENCE = {
    "2.13.0+cpu x86_64 no-amx": {"grpo": "e6a4f206ef373a07b5687c9866035b32cfe3fb7e295bec104d3feeea192fd380",
                                 "ppo": "7c0f19cbf6e48fe536dff7964f53a0c78750cb250cfd77dd2ee08c4dbdf23fb1"},
    "2.13.0+cpu x86_64 amx": {"grpo": "c7c7c995debe3a2c2220ab1ec3a274ce749935adea407fa95fe729d2627e6b23",
                              "ppo": "0bcfa993a9b54db7077ab6531cb4e18f5bab12da3ae53c9b85743fcba9a72612"},
}


def platform_key() -> str:
    return f"{torch.__version__} {platform.machine()} {'amx' if has_amx() else 'no-amx'}"


def weights_hash(run_dir: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    ckpt = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    h = hashlib.sha256()
    models = [AutoModelForCausalLM.from_pretrained(ckpt / "policy")]
    if (ckpt / "critic").is_dir():
        models.append(AutoModelForTokenClassification.from_pretrained(ckpt / "critic"))
    for model in models:
        for name, p in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def run_hash(tmp_path: Path, name: str, extra: list[str] = ()) -> str:
    config, overrides = RUNS[name]
    cfg = load_config(RLConfig, CONFIGS / config, [*overrides, *COMMON, *extra])
    train_rl(cfg, tmp_path / name)
    return weights_hash(tmp_path / name)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_loop_ends_at_main_s_weights_bit_for_bit(tmp_path, name):
    key = platform_key()
    if key not in REFERENCE:
        pytest.skip(f"reference hashes were taken on another platform ({', '.join(REFERENCE)}), not {key}")
    assert run_hash(tmp_path, name) == REFERENCE[key][name]
