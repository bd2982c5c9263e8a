"""A key/value cache whose layers may hold different numbers of tokens.

In-LLM token dropping (VideoChat-Flash) leaves later layers with shorter caches, and Video-XL keeps
only its summary tokens; both are plain per-layer buffers here. Keys are stored after RoPE, at
compact positions 0..len-1, so the next token of layer ``l`` always sits at position ``length(l)``.
Buffers are preallocated and grown in place, so decoding does not re-concatenate the whole cache.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths: list[int] = [0] * num_layers
        self._reserve = 0

    @property
    def num_layers(self) -> int:
        return len(self.lengths)

    def length(self, layer: int) -> int:
        return self.lengths[layer]

    def reserve(self, extra_tokens: int) -> None:
        """Ask for room for `extra_tokens` more tokens at the next growth (e.g. max_new_tokens)."""
        self._reserve = max(0, int(extra_tokens))

    @property
    def reserved(self) -> int:
        return self._reserve

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        k, v, n = self.keys[layer], self.values[layer], self.lengths[layer]
        if k is None or n == 0:
            return None, None
        return k[:, :, :n], v[:, :, :n]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `k`, `v` ([B, kv_heads, n, head_dim]) after the layer's tokens; return the full views."""
        n_old, n_new = self.lengths[layer], k.shape[2]
        buf_k = self.keys[layer]
        if buf_k is None or n_old + n_new > buf_k.shape[2]:
            capacity = n_old + n_new + max(self._reserve, 16 if buf_k is not None else 0)
            self.keys[layer] = self._grow(buf_k, n_old, capacity, k)
            self.values[layer] = self._grow(self.values[layer], n_old, capacity, v)
        self.keys[layer][:, :, n_old : n_old + n_new] = k
        self.values[layer][:, :, n_old : n_old + n_new] = v
        self.lengths[layer] = n_old + n_new
        return self.get(layer)  # type: ignore[return-value]

    @staticmethod
    def _grow(old: torch.Tensor | None, used: int, capacity: int, like: torch.Tensor) -> torch.Tensor:
        b, h, _, d = like.shape
        new = torch.empty(b, h, capacity, d, dtype=like.dtype, device=like.device)
        if old is not None and used:
            new[:, :, :used] = old[:, :, :used]
        return new

    def crop(self, lengths: list[int]) -> None:
        """Forget everything after `lengths` (a snapshot taken with `.lengths.copy()`)."""
        if len(lengths) != self.num_layers:
            raise ValueError("crop() needs one length per layer")
        self.lengths = [min(a, b) for a, b in zip(self.lengths, lengths)]

    def nbytes(self) -> int:
        """Bytes actually used by cached tokens (not the spare capacity)."""
        total = 0
        for k, n in zip(self.keys, self.lengths):
            if k is not None:
                total += 2 * k[:, :, :n].numel() * k.element_size()
        return total
