"""Video-level compression inside the LLM (VideoChat-Flash's `mm_llm_compress`, a PDrop variant).

Before decoder layer `l` in `llm_compress_layer_list`, the visual rows are cut from
`N * ratio[s]` to `N * ratio[s + 1]` (N = visual tokens entering the LLM, s = stage):

* `uniform`: evenly spaced rows, `linspace(0, cur - 1, keep)` truncated to integers;
* `attention`: rank visual rows by the attention the last prompt token pays them, computed with the
  *next* layer's input norm and q/k projections (RoPE at the current positions), softmax in fp32,
  averaged over heads; keep the top `keep`, in their original order;
* `uniform0_attention`: uniform at the first stage, attention afterwards.

The survivors get compact positions. The official code needs the flash-attn / sdpa mask layout and no
KV cache reuse; here the hook only edits the hidden rows, and every layer takes its positions from its
own cache length, so any attention backend works and decoding continues at the right positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..llm.qwen2 import (
    ATTN_BLOCK_ELEMENTS,
    Qwen2ForCausalLM,
    apply_rope,
    repeat_kv,
    rope_cos_sin,
)
from .base import Compressor

TYPES = ("uniform", "attention", "uniform0_attention")


@dataclass
class TokenDropConfig:
    type: str = "attention"
    layers: list[int] = field(default_factory=lambda: [8, 16, 24])
    ratios: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])

    @classmethod
    def from_release(cls, cfg: dict[str, Any]) -> TokenDropConfig | None:
        if not cfg.get("mm_llm_compress", False):
            return None
        c = cls(
            type=str(cfg.get("llm_compress_type", "attention")),
            layers=[int(x) for x in cfg.get("llm_compress_layer_list", [8, 16, 24])],
            ratios=[float(x) for x in cfg.get("llm_image_token_ratio_list", [1.0, 0.5, 0.25, 0.125])],
        )
        c.validate(int(cfg.get("num_hidden_layers", 10**9)))
        return c

    def validate(self, num_layers: int) -> None:
        if self.type not in TYPES:
            raise ConfigError(f"llm_compress_type must be one of {', '.join(TYPES)}, got {self.type!r}")
        if len(self.ratios) != len(self.layers) + 1:
            raise ConfigError("llm_image_token_ratio_list needs exactly one more entry than llm_compress_layer_list")
        if any(not 1 <= layer < num_layers for layer in self.layers) or sorted(set(self.layers)) != self.layers:
            raise ConfigError(f"llm_compress_layer_list must be increasing layer indices in 1..{num_layers - 1}")

    def stage_type(self, stage: int) -> str:
        if self.type == "uniform0_attention":
            return "uniform" if stage == 0 else "attention"
        return self.type


class VideoTokenDrop(Compressor):
    name = "token_drop"

    def __init__(self, cfg: TokenDropConfig):
        self.cfg = cfg

    @property
    def question_dependent(self) -> bool:
        return any(self.cfg.stage_type(s) == "attention" for s in range(len(self.cfg.layers)))

    def kv_tokens(self, num_visual: int, num_layers: int) -> list[int]:
        out = []
        for layer in range(num_layers):
            stage = sum(1 for cut in self.cfg.layers if cut <= layer)
            out.append(int(num_visual * self.cfg.ratios[stage]))
        return out

    def describe(self) -> str:
        return f"token_drop: {self.cfg.type} before layers {self.cfg.layers}, keep {self.cfg.ratios}"

    def hook(self, llm: Qwen2ForCausalLM, image_start: int, num_visual: int, kept_rows: list | None = None):
        """An `after_layer` hook for one prefill whose visual rows start at `image_start`."""
        cfg = self.cfg

        def after_layer(layer: int, hidden: torch.Tensor, next_positions: torch.Tensor) -> torch.Tensor:
            if layer + 1 not in cfg.layers:
                return hidden
            if hidden.shape[0] != 1:
                raise ValueError("in-LLM token dropping runs on one sequence at a time")
            stage = cfg.layers.index(layer + 1)
            cur, keep = int(num_visual * cfg.ratios[stage]), int(num_visual * cfg.ratios[stage + 1])
            if cfg.stage_type(stage) == "uniform":
                idx = torch.linspace(0, cur - 1, keep, dtype=torch.long)
            else:
                score = last_token_attention(llm, layer + 1, hidden, next_positions)
                idx = score[image_start : image_start + cur].topk(keep).indices
            idx = idx.to(hidden.device).sort().values + image_start
            rows = torch.cat(
                [
                    torch.arange(image_start, device=hidden.device),
                    idx,
                    torch.arange(image_start + cur, hidden.shape[1], device=hidden.device),
                ]
            )
            if kept_rows is not None:
                kept_rows.append(rows)
            return hidden[:, rows]

        return after_layer


def last_token_attention(
    llm: Qwen2ForCausalLM, layer: int, hidden: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Head-averaged attention probabilities [n] of the last row over all rows, as layer `layer` sees them."""
    return attention_column_means(llm, layer, hidden, positions, [hidden.shape[1] - 1])


def attention_column_means(
    llm: Qwen2ForCausalLM, layer: int, hidden: torch.Tensor, positions: torch.Tensor, query_rows: list[int]
) -> torch.Tensor:
    """Attention probabilities [n] that rows `query_rows` pay every row (causal), averaged over heads and queries.

    The official ranking (inference: the last prompt row; training: the row before each answer) needs only
    these column means, so queries are taken in blocks whose [heads, rows, n] probabilities stay under
    `ATTN_BLOCK_ELEMENTS`: memory linear in the context however many query rows there are."""
    block = llm.model.layers[layer]
    attn = block.self_attn
    d = attn.cfg.head_dim
    with torch.no_grad():
        h = block.input_layernorm(hidden.detach())
        b, n, _ = h.shape
        if b != 1:
            raise ValueError("attention ranking runs on one sequence at a time")
        cos, sin = rope_cos_sin(positions, d, attn.cfg.rope_theta, h.dtype, attn.cfg.rope_scaling)
        k = attn.k_proj(h).view(b, n, -1, d).transpose(1, 2)
        k = repeat_kv(apply_rope(k, cos, sin), attn.cfg.num_attention_heads // k.shape[1])
        rows = torch.as_tensor(query_rows, dtype=torch.long, device=h.device)
        step = max(1, ATTN_BLOCK_ELEMENTS // (k.shape[1] * n))
        total = torch.zeros(n, dtype=h.dtype, device=h.device)
        for start in range(0, len(rows), step):
            sel = rows[start : start + step]
            q = attn.q_proj(h[:, sel]).view(b, len(sel), -1, d).transpose(1, 2)
            q = apply_rope(q, cos[sel], sin[sel])
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
            future = torch.arange(n, device=h.device)[None, :] > sel[:, None]
            if bool(future.any()):
                scores = scores.masked_fill(future, float("-inf"))
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(h.dtype)
            total += probs.mean(dim=1)[0].sum(dim=0)
        return total / len(rows)
