"""UMT position tables and both towers' shapes, key names and state-dict round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longvid.errors import ConfigError
from longvid.vision import InternVideo2Config, InternVideo2VisionTower, UMTConfig, UMTVisionTower, tower_kind
from longvid.vision.umt import sinusoid_table, umt_position_table


def test_sinusoid_table_formula():
    t = sinusoid_table(10, 8)[0].double()
    pos, j = 7, 5  # odd dim -> cos
    assert t[pos, j] == pytest.approx(np.cos(pos / 10000 ** (2 * (j // 2) / 8)), abs=1e-6)
    assert t[pos, 4] == pytest.approx(np.sin(pos / 10000 ** (4 / 8)), abs=1e-6)


@pytest.mark.parametrize(
    "size,patch,frames",
    [(224, 16, 4), (224, 16, 8), (224, 16, 1), (448, 16, 4), (448, 16, 1), (160, 16, 4), (96, 16, 8), (112, 8, 8)],
)
def test_umt_table_shapes(size, patch, frames):
    cfg = UMTConfig(image_size=size, patch_size=patch, embed_dim=32)
    assert umt_position_table(cfg, frames).shape == (1, frames * (size // patch) ** 2, 32)


def test_umt_table_identities():
    cfg = UMTConfig(image_size=224, patch_size=16, embed_dim=32)
    video = umt_position_table(cfg, 4)
    # 224 px, 4 frames: the plain table; the image table is the first frame's rows
    torch.testing.assert_close(video, sinusoid_table(784, 32))
    torch.testing.assert_close(umt_position_table(cfg, 1)[0], video[0, :196])
    # 8 frames: linear interpolation in time keeps each (h, w) column's end points
    eight = umt_position_table(cfg, 8)[0].reshape(8, 196, 32)
    four = video[0].reshape(4, 196, 32)
    torch.testing.assert_close(eight[0], four[0] * 0.75 + four[0] * 0.25)  # align_corners=False clamps at the edge
    torch.testing.assert_close(eight[3], four[1] * 0.75 + four[2] * 0.25)
    # 448 px keeps the 14x14 grid's values at matching corners only approximately; shape and finiteness
    big = umt_position_table(UMTConfig(image_size=448, embed_dim=32), 4)
    assert torch.isfinite(big).all() and big.shape == (1, 3136, 32)


def test_umt_blocks_and_keys():
    cfg = UMTConfig(image_size=32, patch_size=16, embed_dim=16, depth=3, num_heads=2, select_layer=-2)
    tower = UMTVisionTower(cfg)
    keys = set(tower.state_dict())
    assert {
        "encoder.blocks.1.attn.q_bias",
        "encoder.blocks.1.attn.v_bias",
        "encoder.blocks.1.attn.qkv.weight",
        "encoder.vision_layernorm.weight",
        "encoder.patch_embed.proj.weight",
    } <= keys
    assert "encoder.blocks.2.norm1.weight" not in keys and "encoder.blocks.1.attn.qkv.bias" not in keys
    assert tower.encoder.vision_layernorm.eps == 1e-12
    out = tower(torch.randn(3, 4, 3, 32, 32))
    assert out.shape == (3, 16, 16)


def test_internvideo2_shapes_keys_and_round_trip(tmp_path):
    cfg = InternVideo2Config(image_size=28, patch_size=14, embed_dim=32, depth=4, num_heads=4, mlp_hidden=48)
    torch.manual_seed(0)
    tower = InternVideo2VisionTower(cfg).eval()
    keys = set(tower.state_dict())
    assert {
        "cls_token",
        "pos_embed",
        "img_pos_embed",
        "patch_embed.proj.weight",
        "blocks.2.attn.q_norm.weight",
        "blocks.2.attn.k_norm.weight",
        "blocks.2.ls1.weight",
        "blocks.2.ls2.weight",
        "blocks.2.norm1.weight",
        "blocks.2.mlp.fc1.weight",
        "blocks.2.attn.proj.bias",
    } <= keys
    assert "blocks.3.norm1.weight" not in keys  # depth + select_layer + 1 = 3 blocks
    assert "blocks.0.attn.qkv.bias" not in keys and "blocks.0.norm1.bias" not in keys
    assert tower.pos_embed.shape == (1, 1 + 4 * 4, 32) and tower.img_pos_embed.shape == (1, 1 + 4, 32)
    clips = torch.randn(2, 4, 3, 28, 28)
    with torch.no_grad():
        out = tower(clips)
        img = tower(clips[:, :1])
    assert out.shape == (2, 16, 32) and img.shape == (2, 4, 32)
    from safetensors.torch import load_file, save_file

    save_file(tower.state_dict(), str(tmp_path / "t.safetensors"))
    again = InternVideo2VisionTower(cfg).eval()
    again.load_state_dict(load_file(str(tmp_path / "t.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(clips), out)


def test_internvideo2_qk_norm_is_full_width():
    cfg = InternVideo2Config(
        image_size=14, patch_size=14, embed_dim=32, depth=2, num_heads=4, mlp_hidden=32, select_layer=-1
    )
    tower = InternVideo2VisionTower(cfg)
    assert tower.blocks[0].attn.q_norm.weight.shape == (32,)  # not head_dim


def test_tower_names():
    assert tower_kind("umt-hd-large") == "umt" and tower_kind("umt-large") == "umt"
    assert tower_kind("internvideo2") == "internvideo2"
    with pytest.raises(ConfigError, match="unknown vision tower"):
        tower_kind("siglip")
    assert UMTConfig.from_release({"mm_vision_tower": "umt-hd-large"}).image_size == 448
    assert UMTConfig.from_release({"mm_vision_tower": "umt-large"}).num_blocks == 23
    assert InternVideo2Config.from_release({"mm_vision_tower": "internvideo2"}).num_blocks == 39
    assert InternVideo2Config.from_release({}).mlp_hidden == 6144
