"""InternVideo2-1B, the video encoder of `VideoChat-Flash-Qwen2_5-7B_InternVideo2-1B`.

A ViT-g/14 variant: width 1408, 40 blocks (39 built: `depth + mm_vision_select_layer + 1`), 16 heads,
MLP 6144, RMSNorm (weight only) for the block norms, RMSNorm over the full 1408-d q and k
("QK-norm", not per head), layer-scale on both branches, a CLS token with *learned* position tables
(`pos_embed` for 4-frame clips, `img_pos_embed` for single images), no final norm. CLS is dropped
from the output.

State-dict keys (below `model.vision_tower.vision_tower.`): `cls_token`, `pos_embed`, `img_pos_embed`,
`patch_embed.proj.*`, `blocks.{i}.{norm1,norm2,attn.qkv,attn.q_norm,attn.k_norm,attn.proj,ls1,ls2,
mlp.fc1,mlp.fc2}.*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class InternVideo2Config:
    image_size: int = 224
    patch_size: int = 14
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_hidden: int = 6144  # int(1408 * 48 / 11)
    num_frames: int = 4
    select_layer: int = -2

    @property
    def num_blocks(self) -> int:
        return self.depth + self.select_layer + 1

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_release(cls, cfg: dict[str, Any]) -> InternVideo2Config:
        sizes = cfg.get("parity_vision_tower") or {}
        dim = int(sizes.get("embed_dim", 1408))
        mlp = sizes.get("mlp_hidden") or (
            int(dim * float(sizes["mlp_ratio"])) if "mlp_ratio" in sizes else int(dim * 48 / 11)
        )
        return cls(
            image_size=int(sizes.get("image_size", 224)),
            patch_size=int(sizes.get("patch_size", 14)),
            embed_dim=dim,
            depth=int(sizes.get("depth", 40)),
            num_heads=int(sizes.get("num_heads", 16)),
            mlp_hidden=int(mlp),
            num_frames=int(cfg.get("mm_local_num_frames", 4)),
            select_layer=int(cfg.get("mm_vision_select_layer", -2)),
        )


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


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.weight.float()).type_as(x)  # computed in fp32, as released


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_norm = RMSNorm(dim)
        self.k_norm = RMSNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)  # over the full width, before splitting heads
        q, k, v = (t.reshape(b, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = RMSNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(1, patch, patch), stride=(1, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_3d(dim: int, frames: int, side: int) -> torch.Tensor:
    """3-D sin-cos table [1 + frames*side^2, dim] (3/4 of the dims spatial, 1/4 temporal, CLS row 0)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    d_t = dim // 4
    d_s = dim - d_t
    gy, gx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    spatial = np.concatenate([one_d(d_s // 2, gx), one_d(d_s - d_s // 2, gy)], axis=1)  # [side^2, d_s]
    temporal = one_d(d_t, np.arange(frames))  # [frames, d_t]
    table = np.concatenate([np.repeat(temporal[:, None], side * side, 1), np.repeat(spatial[None], frames, 0)], -1)
    table = np.concatenate([np.zeros((1, dim)), table.reshape(-1, dim)], 0)
    return torch.tensor(table, dtype=torch.float32)


class InternVideo2VisionTower(nn.Module):
    """Clips [B, T, 3, S, S] -> tokens [B, T * (S/14)^2, 1408] (CLS dropped), frame-major."""

    def __init__(self, cfg: InternVideo2Config):
        super().__init__()
        if cfg.embed_dim % 2 or cfg.embed_dim % cfg.num_heads:
            raise ConfigError("internvideo2 embed_dim must be even and divisible by num_heads")
        self.cfg = cfg
        side = cfg.image_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(sincos_3d(cfg.embed_dim, cfg.num_frames, side)[None])
        self.img_pos_embed = nn.Parameter(sincos_3d(cfg.embed_dim, 1, side)[None])
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.num_blocks))
        self.gradient_checkpointing = False

    @property
    def hidden_size(self) -> int:
        return self.cfg.embed_dim

    @property
    def num_heads(self) -> int:
        return self.cfg.num_heads

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, frames = clips.shape[:2]
        if frames not in (1, self.cfg.num_frames):
            raise ConfigError(f"internvideo2 has position tables for {self.cfg.num_frames}-frame clips and images only")
        x = self.patch_embed(clips.permute(0, 2, 1, 3, 4))
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + (self.img_pos_embed if frames == 1 else self.pos_embed).to(x.dtype)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x[:, 1:]
