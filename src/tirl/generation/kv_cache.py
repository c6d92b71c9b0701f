"""A preallocated KV cache for `HFGenerator`: a decode step writes its position in place into a buffer
with room to spare; transformers' `DynamicLayer` concatenates, copying the whole cache at every step.
Sliding-window or hybrid caches keep transformers' own layers.

How much room: a batch's longest possible sequence (cached + suffix + budget) is only an upper bound.
In a tool rollout most rows stop at their first closed code block, long before the budget, so a buffer
sized for the bound is mostly empty room. The buffer instead starts at what the prefill needs plus a
quarter (at least `MIN_ROOM` positions) and grows the same way, never past the bound: a copy of the
cache each time it grows (a few per turn), and the same numbers (views of the same values; tested)."""

from __future__ import annotations

from typing import Any

import torch

MIN_ROOM = 64
"""Positions a buffer has beyond what it holds when it is made or grown (at least; a quarter more)."""


def buffer_length(needed: int, bound: int) -> int:
    """Positions to allocate for `needed`: a quarter more (at least `MIN_ROOM`), capped at `bound` (the
    longest the sequence can get) unless `needed` is already past it."""
    return max(needed, min(bound, needed + max(MIN_ROOM, needed // 4)))


def roomy_layer_class() -> Any:
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        """A `DynamicLayer` whose keys/values are views into buffers with room to spare (`buffer_length`,
        up to `capacity` positions): a decode step writes its position in place instead of concatenating
        (copying) the whole cache."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self._k: torch.Tensor | None = None
            self._v: torch.Tensor | None = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.get_seq_length()
            m = n + key_states.shape[-2]
            if self._k is None or m > self._k.shape[-2] or self._k.shape[0] != key_states.shape[0]:
                shape = (*key_states.shape[:2], buffer_length(m, self.capacity), key_states.shape[-1])
                k, v = key_states.new_empty(shape), value_states.new_empty(shape)
                if n:
                    k[:, :, :n], v[:, :, :n] = self.keys, self.values
                self._k, self._v = k, v
            self._k[:, :, n:m], self._v[:, :, n:m] = key_states, value_states
            self.keys, self.values = self._k[:, :, :m], self._v[:, :, :m]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self._k is not None:
                n = self.get_seq_length()
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    return RoomyLayer


def new_cache(config: Any, capacity: int | None) -> Any:
    """An empty `DynamicCache`; with `capacity` (the longest its sequences can get), its full-attention
    layers write in place into buffers with room to spare, up to that many positions."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    if capacity and cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        roomy = roomy_layer_class()
        cache.layers = [roomy(capacity) for _ in cache.layers]
    return cache
