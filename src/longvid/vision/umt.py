"""UMT-L (Unmasked Teacher ViT-L/16), the video encoder of most VideoChat-Flash checkpoints.

A plain pre-LN ViT over the patches of a whole clip (frames x patches, one sequence), with

* a fixed 1-D sin-cos table over the flattened (t, h, w) index, never stored in the state dict;
  sizes other than 224 px resize the 4x14x14 pretraining table bicubically per frame, clips of other
  than 4 frames interpolate it linearly in time, and single images use their own table;
* `qkv` without bias plus separate `q_bias` / `v_bias` (the key bias is zero);
* only `depth + mm_vision_select_layer + 1` blocks (the released checkpoints never hold the last one),
  then `vision_layernorm` with eps 1e-12.

State-dict keys (below `model.vision_tower.vision_tower.` in a release): `encoder.patch_embed.proj.*`,
`encoder.blocks.{i}.{norm1,attn.qkv,attn.q_bias,attn.v_bias,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`,
`encoder.vision_layernorm.*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

PRETRAIN_FRAMES = 4  # the released UMT-L was pretrained on 4-frame clips of 14x14 patches
PRETRAIN_SIDE = 14


@dataclass
class UMTConfig:
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    ckpt_num_frame: int = PRETRAIN_FRAMES
    num_frames: int = 4  # frames per clip (mm_local_num_frames)
    select_layer: int = -2  # mm_vision_select_layer

    @property
    def num_blocks(self) -> int:
        return self.depth + self.select_layer + 1

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_release(cls, cfg: dict[str, Any]) -> UMTConfig:
        """Tower sizes implied by `mm_vision_tower` (or given by the fixtures' `parity_vision_tower`)."""
        name = str(cfg.get("mm_vision_tower", ""))
        sizes = cfg.get("parity_vision_tower") or {}
        image_size = sizes.get("image_size", 448 if "umt-hd" in name else 224)
        if int(sizes.get("tubelet_size", 1)) != 1:
            raise ConfigError("UMT tubelet_size other than 1 is not supported")
        return cls(
            image_size=int(image_size),
            patch_size=int(sizes.get("patch_size", 16)),
            embed_dim=int(sizes.get("embed_dim", 1024)),
            depth=int(sizes.get("depth", 24)),
            num_heads=int(sizes.get("num_heads", 16)),
            mlp_ratio=float(sizes.get("mlp_ratio", 4.0)),
            ckpt_num_frame=int(sizes.get("ckpt_num_frame", PRETRAIN_FRAMES)),
            num_frames=int(cfg.get("mm_local_num_frames", 4)),
            select_layer=int(cfg.get("mm_vision_select_layer", -2)),
        )


# ------------------------------------------------------------------------------------ position tables


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """The Transformer sin-cos table [1, n, dim]: even dims sin, odd dims cos (built in float64)."""
    j = np.arange(dim)
    angles = np.arange(n_position)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32).unsqueeze(0)


def _resize_spatial(table: torch.Tensor, frames: int, side: int, new_side: int) -> torch.Tensor:
    dim = table.shape[-1]
    t = table.reshape(frames, side, side, dim).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return t.permute(0, 2, 3, 1).reshape(1, frames * new_side * new_side, dim)


def _resize_temporal(table: torch.Tensor, frames: int, side: int, new_frames: int) -> torch.Tensor:
    dim = table.shape[-1]
    t = table.reshape(frames, side, side, dim).permute(1, 2, 3, 0).reshape(-1, dim, frames)
    t = F.interpolate(t, size=new_frames, mode="linear")
    return t.reshape(side, side, dim, new_frames).permute(3, 0, 1, 2).reshape(1, -1, dim)


def umt_position_table(cfg: UMTConfig, frames: int) -> torch.Tensor:
    """Position table [1, frames * side^2, dim] for a clip of `frames` frames (1 = image table)."""
    side, dim, ckpt = cfg.patches_per_side, cfg.embed_dim, cfg.ckpt_num_frame
    if cfg.image_size == 224:  # tables are built directly at the right spatial size
        if frames == 1:
            return sinusoid_table(side * side, dim)
        if frames == ckpt:
            return sinusoid_table(frames * side * side, dim)
        return _resize_temporal(sinusoid_table(ckpt * side * side, dim), ckpt, side, frames)
    # other sizes: start from the 14x14 pretraining table and resize it bicubically per frame
    base_frames = 1 if frames == 1 else ckpt
    table = sinusoid_table(base_frames * PRETRAIN_SIDE**2, dim)
    if side != PRETRAIN_SIDE:
        table = _resize_spatial(table, base_frames, PRETRAIN_SIDE, side)
    if frames not in (1, ckpt):
        table = _resize_temporal(table, ckpt, side, frames)
    return table


# ------------------------------------------------------------------------------------ modules


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
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
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(1, patch, patch), stride=(1, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, T, H, W] -> [B, T*h*w, C]
        return self.proj(x).flatten(2).transpose(1, 2)


class UMTEncoder(nn.Module):
    def __init__(self, cfg: UMTConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_blocks))
        self.vision_layernorm = nn.LayerNorm(cfg.embed_dim, eps=1e-12)


class UMTVisionTower(nn.Module):
    """Clips [B, T, 3, S, S] (normalised pixels) -> tokens [B, T * (S/patch)^2, dim], frame-major."""

    def __init__(self, cfg: UMTConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = UMTEncoder(cfg)
        self.gradient_checkpointing = False
        self._tables: dict[int, torch.Tensor] = {}

    @property
    def hidden_size(self) -> int:
        return self.cfg.embed_dim

    @property
    def num_heads(self) -> int:
        return self.cfg.num_heads

    def position_table(self, frames: int) -> torch.Tensor:
        if frames not in self._tables:
            self._tables[frames] = umt_position_table(self.cfg, frames)
        return self._tables[frames]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        frames = clips.shape[1]
        x = self.encoder.patch_embed(clips.permute(0, 2, 1, 3, 4))
        x = x + self.position_table(frames).to(device=x.device, dtype=x.dtype)
        for block in self.encoder.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.encoder.vision_layernorm(x)
