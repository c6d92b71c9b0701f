"""Test-session set-up: offline, single-threaded, and every file under a temporary folder."""

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="tirl-tests-")
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HOME": os.path.join(_TMP, "home"),
    "HF_HOME": os.path.join(_TMP, "hf"),
    "MPLCONFIGDIR": os.path.join(_TMP, "mpl"),
    "WANDB_MODE": "disabled",
    # Small ops on a 2-core box run far slower with 2 threads than with 1 (see docs/development.md).
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value
os.makedirs(os.environ["HOME"], exist_ok=True)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device: skipped (not failed) on machines without one."""
    import pytest

    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
