"""The `distributed:` section without Ray: the default run never imports ray, `backend: ray` without the
extra is refused with the install command, and contradictory settings are refused by name."""

import subprocess
import sys

import pytest

from tirl.distributed import DistributedConfig

BLOCK_RAY = "import sys; sys.modules['ray'] = None\n"  # as if the extra were not installed


def test_the_trainer_does_not_import_ray():
    code = "import sys, tirl.train.rl, tirl.distributed.local\nassert 'ray' not in sys.modules, 'ray imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


NCCL = ["distributed.backend=ray", "distributed.generator=openai", "distributed.server_urls=[http://h:8000]",
        "distributed.weight_sync=nccl"]


@pytest.mark.parametrize("prelude, message", [
    ("sys.modules['vllm'] = None\n", "needs vLLM, which is not installed: pip install 'tirl[vllm]'"),
    # vLLM importable (a stand-in module) but no CUDA device, as on this CPU machine.
    ("import types, torch; sys.modules['vllm'] = types.ModuleType('vllm'); torch.cuda.is_available = lambda: False\n",
     "needs a CUDA GPU on the trainer"),
])
def test_nccl_sync_without_vllm_or_cuda_is_refused_in_one_line(tmp_path, prelude, message):
    code = "import sys\n" + prelude + ("from tirl.cli import main\nsys.exit(main(['train', *" + repr(NCCL) +
                                      f", '--run-dir', {str(tmp_path / 'run')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert message in out and "Traceback" not in out
    assert len([ln for ln in out.splitlines() if "weight_sync=nccl" in ln]) == 1
    assert not (tmp_path / "run").exists()


def test_the_nccl_module_imports_neither_vllm_nor_cuda_until_used():
    code = ("import sys, tirl.distributed.vllm_nccl, tirl.distributed.server_sync\n"
            "assert 'vllm' not in sys.modules and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'vllm' in m or m == 'torch')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_backend_ray_without_ray_is_refused_with_the_install_command(tmp_path):
    code = BLOCK_RAY + ("from tirl.cli import main\nsys.exit(main(['train', 'distributed.backend=ray', "
                        f"'--run-dir', {str(tmp_path / 'run')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "pip install 'tirl[ray]'" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("fields, message", [
    ({"backend": "spark"}, "distributed.backend must be one of local, ray"),
    ({"generator": "openai"}, "needs distributed.server_urls"),
    ({"generator": "openai", "server_urls": ["http://h:8000"]}, "weight_sync=disk"),
    ({"weight_sync": "disk"}, "for server generators"),
    ({"sandbox": "urls"}, "needs distributed.sandbox_urls"),
    ({"rollout_workers": 0}, "must be >= 1"),
    ({"weight_sync": "nccl"}, "weight_sync=nccl is for vLLM servers"),
    ({"generator": "openai", "server_urls": ["http://h:8000"], "weight_sync": "nccl"}, "set distributed.backend=ray"),
])
def test_contradictions_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        DistributedConfig(**fields).validate()
