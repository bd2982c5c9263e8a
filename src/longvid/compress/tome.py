"""Clip-level token merging (ToMe bipartite soft matching), VideoChat-Flash's first compression stage.

All patch tokens of a clip (frames x patches) are merged together down to 16 per frame (64 for a
single image) before the MLP projector. Faithful to the released `tome16_mlp_hd64`:

* halving schedule: remove min(p - target, p // 2) tokens per step until `target` remain;
* similarity metric = channel chunks averaged over the vision tower's heads, then cosine;
* a = even tokens, b = odd tokens of the current order; each a-token's best b-partner; the r
  most similar a-tokens are merged (size-weighted average) into their partners;
* output order = unmerged a-tokens by descending similarity, then all b-tokens. This order is not
  spatial, and the LLM was trained on it, so it is kept as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Compressor


def merge_schedule(tokens: int, target: int) -> list[int]:
    """Tokens removed at each step, e.g. 784 -> 64: [392, 196, 98, 34]."""
    if tokens < target:
        raise ValueError(f"ToMe needs at least {target} tokens, got {tokens}")
    steps = []
    while tokens != target:
        r = tokens - target if tokens - target <= tokens // 2 else tokens // 2
        steps.append(r)
        tokens -= r
    return steps


@dataclass
class MergeDecision:
    unm_idx: torch.Tensor  # [b, a_tokens - r] indices into the a (even) tokens that stay
    src_idx: torch.Tensor  # [b, r] a-tokens merged away
    dst_idx: torch.Tensor  # [b, r] their b (odd) partners


def _match(x: torch.Tensor, r: int, num_heads: int) -> MergeDecision:
    b, p, c = x.shape
    with torch.no_grad():
        metric = x.reshape(b, p, num_heads, c // num_heads).mean(2)
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)
        node_max, node_idx = scores.max(dim=-1)
        order = node_max.argsort(dim=-1, descending=True)
        src = order[:, :r]
        return MergeDecision(order[:, r:], src, node_idx.gather(1, src))


def _apply(t: torch.Tensor, d: MergeDecision) -> torch.Tensor:
    """Sum-merge `t` [b, p, c] with decision `d`: [unmerged a-tokens, b-tokens (+ merged a)]."""
    a, b_tok = t[:, ::2], t[:, 1::2]
    c = t.shape[-1]
    unm = a.gather(1, d.unm_idx[..., None].expand(-1, -1, c))
    src = a.gather(1, d.src_idx[..., None].expand(-1, -1, c))
    b_tok = b_tok.scatter_add(1, d.dst_idx[..., None].expand(-1, -1, c), src)
    return torch.cat([unm, b_tok], dim=1)


def tome_merge(
    x: torch.Tensor, target: int, num_heads: int, decisions: list[MergeDecision] | None = None
) -> torch.Tensor:
    """Merge x [b, p, c] down to [b, target, c]; append each step's decision to `decisions` if given."""
    size = torch.ones_like(x[..., :1])
    for r in merge_schedule(x.shape[1], target):
        d = _match(x, r, num_heads)
        if decisions is not None:
            decisions.append(d)
        x = _apply(x * size, d)
        size = _apply(size, d)
        x = x / size
    return x


def replay(decisions: list[MergeDecision], t: torch.Tensor) -> torch.Tensor:
    """Sum-merge `t` [b, p, k] with the decisions a `tome_merge` recorded: with one-hot frame ids, the
    number of each merged token's patches that came from each frame of the clip."""
    for d in decisions:
        t = _apply(t, d)
    return t


class ToMeCompressor(Compressor):
    """16 tokens per frame (64 per image), merged inside each clip before the LLM."""

    name = "tome"

    def __init__(self, num_heads: int, tokens_per_frame: int = 16, tokens_per_image: int = 64):
        self.num_heads = num_heads
        self.tokens_per_frame = tokens_per_frame
        self.tokens_per_image = tokens_per_image

    def __call__(
        self, feats: torch.Tensor, frames_per_clip: int, is_image: bool = False, decisions=None
    ) -> torch.Tensor:
        """feats [clips, frames_per_clip * patches, C] -> [clips, tokens, C]."""
        target = self.tokens_per_image if is_image else self.tokens_per_frame * frames_per_clip
        return tome_merge(feats, target, self.num_heads, decisions)

    def kv_tokens(self, num_visual: int, num_layers: int) -> list[int]:
        return [num_visual] * num_layers

    def describe(self) -> str:
        return f"tome: {self.tokens_per_frame} tokens/frame inside each clip"
