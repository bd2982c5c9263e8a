"""The Qwen2 / Qwen2.5 decoder, readable top to bottom.

Weights use the Hugging Face key names (`model.layers.{i}.self_attn.q_proj.weight`, `lm_head.weight`, ...),
so a released checkpoint loads without conversion. Two extensions are built in because the systems
we re-implement need them inside the layer loop:

* `after_layer` hooks may drop rows between layers (VideoChat-Flash's video-level compression). Each
  layer computes its positions from its own cache length, so dropped tokens leave compact positions
  during prefill and the right decode-time shift afterwards, with any attention backend.
* optional `beacon_{q,k,v}_proj` (Video-XL's visual summarization tokens): rows flagged in
  `Step.beacon_mask` use them, and `Step.keep` says which rows' keys/values the cache keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache


@dataclass
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    beacon_param: list[str] = field(default_factory=list)  # Video-XL: which projections get beacon copies
    attn_implementation: str = "sdpa"  # "sdpa" (any torch backend, incl. flash kernels on GPU) or "eager"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Qwen2Config":
        """Read the LLM part of a released (HF-style) config.json, ignoring every other key."""
        theta = d.get("rope_theta")
        if theta is None:  # transformers >= 5 writes rope_parameters instead
            theta = (d.get("rope_parameters") or {}).get("rope_theta", cls.rope_theta)
        names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "hidden_act")
        kwargs = {k: d[k] for k in names if k in d}
        kwargs["num_key_value_heads"] = d.get("num_key_value_heads") or d.get("num_attention_heads", cls.num_attention_heads)
        kwargs["rope_theta"] = float(theta)
        kwargs["beacon_param"] = list(d.get("beacon_param") or [])
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------- pieces


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables for integer `positions` [n] (fp32 math, as the reference implementations)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [B, heads, n, d] by per-row tables [n, d]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def causal_mask(n_query: int, n_past: int, device) -> torch.Tensor | None:
    """Boolean mask (True = attend) for `n_query` new tokens after `n_past` cached ones; None if trivial."""
    if n_query == 1:
        return None
    keys = torch.arange(n_past + n_query, device=device)
    return keys[None, :] <= (n_past + torch.arange(n_query, device=device))[:, None]


def attention(q, k, v, n_past: int, implementation: str = "sdpa") -> torch.Tensor:
    """Causal attention of new queries q [B,H,n,d] over keys/values [B,KV,n_past+n,d]."""
    n = q.shape[2]
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    if implementation == "eager":
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = causal_mask(n, n_past, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
    if n_past == 0 and n > 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(n, n_past, q.device))


@dataclass
class Step:
    """Per-forward extras for Video-XL's beacon windows (None everywhere for a plain forward)."""

    beacon_mask: torch.Tensor | None = None  # [n] bool: rows that are summary tokens
    keep: torch.Tensor | None = None  # [k] long: rows whose K/V stay in the cache (None = all)


# --------------------------------------------------------------------------------------------- layers


class Attention(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.cfg = cfg
        h, d, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = nn.Linear(h, nh * d, bias=True)
        self.k_proj = nn.Linear(h, nkv * d, bias=True)
        self.v_proj = nn.Linear(h, nkv * d, bias=True)
        self.o_proj = nn.Linear(nh * d, h, bias=False)
        for name in ("q", "k", "v"):
            if name in cfg.beacon_param:
                src = getattr(self, f"{name}_proj")
                setattr(self, f"beacon_{name}_proj", nn.Linear(h, src.out_features, bias=True))

    def project(self, x: torch.Tensor, name: str, beacon_mask: torch.Tensor | None) -> torch.Tensor:
        out = getattr(self, f"{name}_proj")(x)
        beacon = getattr(self, f"beacon_{name}_proj", None)
        if beacon_mask is not None and beacon is not None and bool(beacon_mask.any()):
            out = out.clone()
            out[:, beacon_mask] = beacon(x[:, beacon_mask])
        return out

    def qkv(self, x: torch.Tensor, positions: torch.Tensor, beacon_mask=None):
        """Queries and keys after RoPE at `positions`, plus values and pre-RoPE keys: [B, heads, n, d]."""
        b, n, _ = x.shape
        d = self.cfg.head_dim
        q = self.project(x, "q", beacon_mask).view(b, n, -1, d).transpose(1, 2)
        k = self.project(x, "k", beacon_mask).view(b, n, -1, d).transpose(1, 2)
        v = self.project(x, "v", beacon_mask).view(b, n, -1, d).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, d, self.cfg.rope_theta, x.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, k

    def forward(self, x, layer_idx: int, positions, cache: KVCache | None, step: Step) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v, k_raw = self.qkv(x, positions, step.beacon_mask)
        n_past = cache.length(layer_idx) if cache is not None else 0
        if cache is None:
            keys, values = k, v
        elif step.keep is None:
            keys, values = cache.append(layer_idx, k, v)
        else:  # attend over everything, but keep only some rows, re-rotated to compact positions
            past_k, past_v = cache.get(layer_idx)
            keys = k if past_k is None else torch.cat([past_k, k], dim=2)
            values = v if past_v is None else torch.cat([past_v, v], dim=2)
            kept_pos = n_past + torch.arange(len(step.keep), device=x.device)
            cos, sin = rope_cos_sin(kept_pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
            cache.append(layer_idx, apply_rope(k_raw[:, :, step.keep], cos, sin), v[:, :, step.keep])
        out = attention(q, keys, values, n_past, self.cfg.attn_implementation)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, layer_idx, positions, cache=None, step: Step = Step()):
        x = x + self.self_attn(self.input_layernorm(x), layer_idx, positions, cache, step)
        return x + self.mlp(self.post_attention_layernorm(x))


# --------------------------------------------------------------------------------------------- model

# after_layer(layer_idx, hidden, next_positions) -> hidden, may drop rows (see compress/token_drop.py)
AfterLayerHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DecoderOutput:
    hidden: torch.Tensor  # after the final norm, [B, n_out, H]
    hidden_states: list[torch.Tensor] | None = None  # HF convention: inputs of each layer + final normed


class Qwen2Model(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.beacon_param:
            self.beacon_embed_tokens = nn.Embedding(1, cfg.hidden_size)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.config = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def positions(self, layer: int, n: int, cache: KVCache | None, device) -> torch.Tensor:
        past = cache.length(layer) if cache is not None else 0
        return torch.arange(past, past + n, device=device)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        cache: KVCache | None = None,
        after_layer: AfterLayerHook | None = None,
        step: Step = Step(),
        output_hidden_states: bool = False,
        positions: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """`positions` [n] overrides the default (cache length + 0..n-1) in every layer, e.g. for the
        train-time position skipping of VideoChat-Flash (`use_pos_skipping`); not with row dropping."""
        if positions is not None and after_layer is not None:
            raise ValueError("explicit positions cannot be combined with dropping rows between layers")
        x = inputs_embeds
        states = [] if output_hidden_states else None
        layers = self.model.layers
        for i, layer in enumerate(layers):
            if states is not None:
                states.append(x)
            pos = positions if positions is not None else self.positions(i, x.shape[1], cache, x.device)
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, i, pos, cache, step, use_reentrant=False)
            else:
                x = layer(x, i, pos, cache, step)
            if after_layer is not None and i + 1 < len(layers):
                x = after_layer(i, x, self.positions(i + 1, x.shape[1], cache, x.device))
        x = self.model.norm(x)
        if states is not None:
            states.append(x)
        return DecoderOutput(hidden=x, hidden_states=states)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
