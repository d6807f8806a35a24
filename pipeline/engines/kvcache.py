"""One sequence's own KV cache: what makes attention in the batch-invariant engine a row's own.

Every sequence owns its cache, never padded and never shared, so attention over it runs on the
same shapes and strides whether the row decodes alone or among 63 others
(pipeline/engines/rowwise.py). The cache grows in blocks of `KV_BLOCK` positions, so its strides
depend only on the row's own length.
"""

from __future__ import annotations

import torch

KV_BLOCK = 256  # cache capacity grows in blocks of this many positions


class Sequence:
    """One sequence's KV cache: per layer a (1, kv_heads, capacity, head_dim) buffer."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    @property
    def length(self) -> int:
        """Positions in the cache (the next token's position)."""
        return self.lengths[-1]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (1, kv_heads, t, head_dim) keys/values; return views of everything cached."""
        start, t = self.lengths[layer], k.shape[2]
        end = start + t
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or buf_k.shape[2] < end:
            cap = -(-end // KV_BLOCK) * KV_BLOCK
            new_k = k.new_empty(1, k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(1, v.shape[1], cap, v.shape[3])
            if buf_k is not None:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            self.keys[layer], self.values[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        self.lengths[layer] = end
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def copy(self, trim: bool = False) -> "Sequence":
        """An independent copy: laid out as a fresh sequence of this length would be (capacity
        in KV_BLOCKs, so extending it runs on the same strides as extending a fresh prefill),
        or with `trim` exactly as long as it is (to keep: the prefix cache's stored form)."""
        n = self.length
        cap = n if trim else -(-n // KV_BLOCK) * KV_BLOCK
        twin = Sequence(len(self.keys))
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is None:
                continue
            twin.keys[layer] = k.new_empty(1, k.shape[1], cap, k.shape[3])
            twin.values[layer] = v.new_empty(1, v.shape[1], cap, v.shape[3])
            twin.keys[layer][:, :, :n] = k[:, :, :n]
            twin.values[layer][:, :, :n] = v[:, :, :n]
        twin.lengths = list(self.lengths)
        return twin

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
