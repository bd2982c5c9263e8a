"""The Qwen2 / Qwen2.5 decoder, readable top to bottom.

Weights use the Hugging Face key names (`model.layers.{i}.self_attn.q_proj.weight`, `lm_head.weight`, ...),
so a released checkpoint loads without conversion. Two extensions are built in because the systems
we re-implement need them inside the layer loop:

* `after_layer` hooks may drop rows between layers (VideoChat-Flash's video-level compression). Each
  layer computes its positions from its own cache length, so dropped tokens leave compact positions
  during prefill and the right decode-time shift afterwards, with any attention backend.
* optional `beacon_{q,k,v}_proj` (Video-XL's visual summarization tokens): rows flagged in
  `Step.beacon_mask` use them, and `Step.keep` says which rows' keys/values the cache keeps.

Prefill runs in memory linear in the context, whatever the path: a plain cached prefill goes through the
whole stack `prefill_chunk` rows at a time; inside a layer, queries that follow cached keys attend in row
blocks sized so that no block materialises more than `ATTN_BLOCK_ELEMENTS` mask/score entries, and the MLP
runs `prefill_chunk` rows at a time. Chunking changes the numbers only by float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .kv_cache import KVCache

# The most mask (sdpa) or score (eager, per head) entries one attention block may materialise: 4M entries,
# 16 MB in fp32, whatever the context length (the block's query rows shrink as the keys grow).
ATTN_BLOCK_ELEMENTS = 1 << 22

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    # transformers' NewGELUActivation / FastGELUActivation / QuickGELUActivation, written out as they are
    "gelu_new": lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
}
ROPE_TYPES = ("linear", "dynamic", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    """`rope_scaling` (transformers <= 4.x) / `rope_parameters` (>= 5) of a config, as transformers reads it."""

    type: str  # linear | dynamic | yarn
    factor: float
    max_position_embeddings: int  # dynamic: the trained context; yarn: the original (pre-extension) one
    attention_factor: float | None = None  # yarn: cos/sin scale; None = derived from factor / mscale
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> RopeScaling | None:
        raw = d.get("rope_scaling")
        if raw is None and isinstance(d.get("rope_parameters"), dict):
            raw = d["rope_parameters"]
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise ConfigError(f"rope_scaling must be an object or null, got {raw!r}")
        kind = raw.get("rope_type", raw.get("type", "default"))
        if kind == "default":
            return None
        if kind not in ROPE_TYPES:
            raise ConfigError(f"rope_scaling type {kind!r} is not supported (use one of {', '.join(ROPE_TYPES)})")
        factor = raw.get("factor")
        if factor is None and kind == "yarn" and raw.get("original_max_position_embeddings"):
            factor = d.get("max_position_embeddings", 0) / raw["original_max_position_embeddings"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            raise ConfigError(f"rope_scaling {kind} needs a factor >= 1, got {factor!r}")
        max_pos = d.get("max_position_embeddings", Qwen2Config.max_position_embeddings)
        if kind == "yarn":  # transformers prefers a top-level original_max_position_embeddings (Phi-3 style)
            original = d.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings")
            max_pos = original or max_pos
        numbers = {
            k: raw[k]
            for k in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
            if raw.get(k) is not None
        }
        for key, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"rope_scaling {key} must be a number, got {value!r}")
        return cls(
            kind,
            float(factor),
            int(max_pos),
            truncate=bool(raw.get("truncate", True)),
            **{k: float(v) for k, v in numbers.items()},
        )


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
    rope_scaling: RopeScaling | None = None
    beacon_param: list[str] = field(default_factory=list)  # Video-XL: which projections get beacon copies
    attn_implementation: str = "sdpa"  # "sdpa" (any torch backend, incl. flash kernels on GPU) or "eager"
    prefill_chunk: int = 2048  # rows per prefill step / MLP block (not a config.json key; numbers barely move)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Qwen2Config:
        """Read the LLM part of a released (HF-style) config.json, ignoring every other key."""
        theta = d.get("rope_theta")
        if theta is None:  # transformers >= 5 writes rope_parameters instead
            theta = (d.get("rope_parameters") or {}).get("rope_theta", cls.rope_theta)
        names = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "rms_norm_eps",
            "max_position_embeddings",
            "tie_word_embeddings",
            "hidden_act",
        )
        kwargs = {k: d[k] for k in names if k in d}
        kwargs["num_key_value_heads"] = d.get("num_key_value_heads") or d.get(
            "num_attention_heads", cls.num_attention_heads
        )
        kwargs["rope_theta"] = float(theta)
        kwargs["beacon_param"] = list(d.get("beacon_param") or [])
        kwargs["rope_scaling"] = RopeScaling.from_config(d)
        if kwargs.get("hidden_act", "silu") not in ACTIVATIONS:
            raise ConfigError(f"hidden_act={d['hidden_act']!r} is not supported (use one of {', '.join(ACTIVATIONS)})")
        if d.get("use_sliding_window"):
            # transformers picks the sliding layers by max_window_layers with opposite meanings across versions
            # (4.40 flash-attn: layers below it; >= 4.48 every backend: layers from it up) and 4.40's sdpa/eager
            # ignore the window: no single behaviour to match, so refuse rather than guess
            raise ConfigError(
                "use_sliding_window=true is not supported (which layers slide depends on the "
                "transformers version and attention backend); set it to false, as released"
            )
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


def rope_inv_freq(
    head_dim: int, theta: float, scaling: RopeScaling | None = None, seq_len: int = 0
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] and the factor cos/sin are scaled by, as transformers computes them
    (same operation order, so the tables are equal). `seq_len` (highest position + 1) matters only to dynamic."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    if scaling is None:
        return 1.0 / (theta**exponents), 1.0
    factor = scaling.factor
    if scaling.type == "linear":  # positions divided by the factor
        return 1.0 / (theta**exponents) / factor, 1.0
    if scaling.type == "dynamic":  # NTK-aware: a larger base once the sequence outgrows the trained context
        trained = scaling.max_position_embeddings
        seq_len = max(seq_len, trained)
        base = theta * ((factor * seq_len / trained) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / (base**exponents), 1.0

    # yarn: interpolate low frequencies, keep high ones, ramp between; scale attention by the "mscale"
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.attention_factor
    if attention_factor is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention_factor = mscale(factor, scaling.mscale) / mscale(factor, scaling.mscale_all_dim)
        else:
            attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(scaling.max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, scaling: RopeScaling | None = None
):
    """cos/sin tables for integer `positions` [n] (fp32 math, as the reference implementations).

    Dynamic scaling sizes its base by the highest position in `positions`, as transformers does for one
    forward call (it then keeps the largest base it has seen; here every call decides afresh)."""
    seq_len = int(positions.max()) + 1 if scaling is not None and scaling.type == "dynamic" and len(positions) else 0
    inv_freq, factor = rope_inv_freq(head_dim, theta, scaling, seq_len)
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * factor).to(dtype), (emb.sin() * factor).to(dtype)


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


def attention(q, k, v, n_past: int, implementation: str = "sdpa", block_rows: int | None = None) -> torch.Tensor:
    """Causal attention of new queries q [B,H,n,d] over keys/values [B,KV,n_past+n,d].

    A fresh causal prefill is one `is_causal` call (the flash kernels tile it, no scores are stored). Queries
    after cached keys take, on CPU without gradients, two unmasked flash calls merged by log-sum-exp
    (`_split_attention`). Elsewhere they need a mask, and any masked kernel materialises it (or, eager, the
    scores) as [rows, keys]; so they attend in blocks of rows sized by `ATTN_BLOCK_ELEMENTS` (and at most
    `block_rows`), block i seeing the keys up to its own last row, which keeps memory linear in the context."""
    n, total = q.shape[2], k.shape[2]
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    if n == 1:
        return _attend(q, k, v, 0, implementation)
    if n_past == 0 and implementation == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if implementation == "sdpa" and _split_ok(q, k, v):
        return _split_attention(q, k, v, n_past)
    per_row = total * (q.shape[1] if implementation == "eager" else 1)
    rows = max(1, min(block_rows or n, ATTN_BLOCK_ELEMENTS // per_row))
    if rows >= n:
        return _attend(q, k, v, n_past, implementation)
    out = torch.empty_like(q)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        keys = n_past + end
        out[:, :, start:end] = _attend(
            q[:, :, start:end], k[:, :, :keys], v[:, :, :keys], n_past + start, implementation
        )
    return out


# PyTorch's CPU flash kernel, which also returns each row's log-sum-exp (the public sdpa does not).
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _split_ok(q, k, v) -> bool:
    """The split path needs the CPU kernel, a dtype it takes, and no gradient (its log-sum-exp has none)."""
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return _FLASH_CPU is not None and q.device.type == "cpu" and not grad and q.dtype in (torch.float32, torch.bfloat16)


def _split_attention(q, k, v, n_past: int) -> torch.Tensor:
    """Queries after cached keys without any mask: two flash calls, the queries over the cached keys (all
    visible) and over the new square (causal), merged by their log-sum-exp. Softmax over the union of two key
    sets is the two partial results weighted by their mass, e^lse1 : e^lse2, i.e. sigmoid(lse1 - lse2). Equal to
    the masked blocks up to rounding and nothing of size rows x keys is stored; a 65k-token question after a
    video prefills 1.6x faster than through the masked blocks (benchmarks/long_prompt.py)."""
    past, past_lse = _FLASH_CPU(q, k[:, :, :n_past], v[:, :, :n_past], 0.0, False)[:2]
    new, new_lse = _FLASH_CPU(q, k[:, :, n_past:], v[:, :, n_past:], 0.0, True)[:2]
    weight = torch.sigmoid(past_lse - new_lse).unsqueeze(-1)  # [B, H, n, 1], float32
    return (new.float() + (past.float() - new.float()) * weight).to(q.dtype)


def _attend(q, k, v, n_past: int, implementation: str) -> torch.Tensor:
    """One causal block: the n queries sit at positions n_past.. of the n_past + n keys."""
    n = q.shape[2]
    if implementation == "eager":
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = causal_mask(n, n_past, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if n_past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # additive mask in the query dtype: zeros over the past, -inf above the diagonal of the new square
    mask = torch.zeros(n, n_past + n, dtype=q.dtype, device=q.device)
    mask[:, n_past:].masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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
        cos, sin = rope_cos_sin(positions, d, self.cfg.rope_theta, x.dtype, self.cfg.rope_scaling)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, k

    def forward(self, x, layer_idx: int, positions, cache: KVCache | None, step: Step) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v, k_raw = self.qkv(x, positions, step.beacon_mask)
        n_past = cache.length(layer_idx) if cache is not None else 0
        if cache is None:
            keys, values = k, v
        else:  # in place after the cached rows (no copy of the cache)
            keys, values = cache.append(layer_idx, k, v)
        out = attention(q, keys, values, n_past, self.cfg.attn_implementation, self.cfg.prefill_chunk)
        if cache is not None and step.keep is not None:
            # attended over everything; now keep only some rows, re-rotated to compact positions
            cache.lengths[layer_idx] = n_past
            kept_pos = n_past + torch.arange(len(step.keep), device=x.device)
            cos, sin = rope_cos_sin(kept_pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype, self.cfg.rope_scaling)
            cache.append(layer_idx, apply_rope(k_raw[:, :, step.keep], cos, sin), v[:, :, step.keep])
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.cfg = cfg

    def forward(self, x, layer_idx, positions, cache=None, step: Step = Step()):
        x = x + self.self_attn(self.input_layernorm(x), layer_idx, positions, cache, step)
        chunk = self.cfg.prefill_chunk
        if x.shape[1] <= chunk or torch.is_grad_enabled():
            return x + self.mlp(self.post_attention_layernorm(x))
        # rows are independent here: bound the [rows, intermediate] activations of a long prefill
        out = torch.empty_like(x)
        for s in range(0, x.shape[1], chunk):
            part = x[:, s : s + chunk]
            out[:, s : s + chunk] = part + self.mlp(self.post_attention_layernorm(part))
        return out


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
        if self._chunkable(inputs_embeds, cache, after_layer, step, output_hidden_states, positions):
            # chunked prefill: each chunk runs through every layer against the cache the earlier chunks left,
            # so activations stay bounded by one chunk and only the KV cache grows with the context
            chunk, n, reserved = self.config.prefill_chunk, inputs_embeds.shape[1], cache.reserved
            cache.reserve(reserved + n - chunk)  # the first growth makes room for every chunk (no re-copies)
            try:
                parts = [
                    self._forward(inputs_embeds[:, s : s + chunk], cache, None, step, False, None).hidden
                    for s in range(0, n, chunk)
                ]
            finally:
                cache.reserve(reserved)
            return DecoderOutput(hidden=torch.cat(parts, dim=1))
        return self._forward(inputs_embeds, cache, after_layer, step, output_hidden_states, positions)

    def _chunkable(self, x, cache, after_layer, step, output_hidden_states, positions) -> bool:
        """Chunking equals one pass only where rows flow through the layers independently of later rows:
        a cached, hook-free, beacon-free inference prefill (dynamic RoPE sizes its base by the whole call)."""
        scaling = self.config.rope_scaling
        return (
            cache is not None
            and after_layer is None
            and step.beacon_mask is None
            and step.keep is None
            and not output_hidden_states
            and positions is None
            and x.shape[1] > self.config.prefill_chunk
            and not torch.is_grad_enabled()
            and (scaling is None or scaling.type != "dynamic")
        )

    def _forward(self, inputs_embeds, cache, after_layer, step, output_hidden_states, positions) -> DecoderOutput:
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
