"""Weights as plain numpy arrays (what the object store moves without copies), their hash, and loading.

A sync that silently does nothing is the failure peers hit (trl#5312, SkyRL#1680), so every copy
carries a version and can be hashed: the hash covers names, dtypes, shapes and bytes, in name order.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import torch

# numpy has no bfloat16: such tensors travel as their raw 16-bit patterns.
_RAW = {torch.bfloat16: np.int16}


def weight_arrays(model: Any) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (torch dtype name, array)} of the model's state dict, on the CPU; views where possible."""
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        raw = _RAW.get(t.dtype)
        arr = t.view(torch.int16).numpy() if raw is not None else t.numpy()
        out[name] = (str(t.dtype).removeprefix("torch."), arr)
    return out


def hash_update(h: Any, name: str, dtype: str, shape: tuple[int, ...], arr: np.ndarray) -> None:
    """One tensor's share of a weights hash (also fed by the NCCL receiver, from raw bytes)."""
    h.update(f"{name}|{dtype}|{tuple(shape)}|".encode())
    h.update(np.ascontiguousarray(arr).view(np.uint8).data)


def arrays_hash(arrays: dict[str, tuple[str, np.ndarray]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        dtype, arr = arrays[name]
        hash_update(h, name, dtype, arr.shape, arr)
    return h.hexdigest()


def model_hash(model: Any) -> str:
    return arrays_hash(weight_arrays(model))


def load_arrays(model: Any, arrays: dict[str, tuple[str, np.ndarray]]) -> None:
    """Copy the arrays into the model's tensors in place (strict: every name, the same shapes)."""
    state = model.state_dict()
    missing, unexpected = set(state) - set(arrays), set(arrays) - set(state)
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name, (dtype, arr) in arrays.items():
            with warnings.catch_warnings():  # object-store arrays are read-only; they are only read here
                warnings.simplefilter("ignore", UserWarning)
                src = torch.from_numpy(np.asarray(arr))
            dt = getattr(torch, dtype)
            if dt in _RAW:
                src = src.view(dt)
            state[name].copy_(src)
