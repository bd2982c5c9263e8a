"""The general case the hidden fixture exercises: other tower name and size, 8-frame clips, non-square
frames, grouped-query ratio 3, mm_hidden_size != hidden_size, other compression layers; plus loading
sharded checkpoints and saving in the released key names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import longvid
from longvid.cli import main
from longvid.tiny import make_checkpoint, tiny_videochat_flash_config


@pytest.fixture(scope="module")
def fixture_b(tmp_path_factory):
    cfg = tiny_videochat_flash_config(
        512,
        hidden=72,
        layers=5,
        heads=6,
        kv_heads=2,
        intermediate=96,
        tower="umt-large",
        image_size=96,
        patch=16,
        vision_dim=48,
        vision_depth=3,
        vision_heads=4,
        frames_per_clip=8,
        mm_llm_compress=False,
        llm_compress_type="attention",
        llm_compress_layer_list=[2, 3],
        llm_image_token_ratio_list=[1.0, 0.5, 0.25],
    )
    return make_checkpoint(tmp_path_factory.mktemp("b") / "ckpt", cfg, seed=5)


def test_general_shapes_through_cli(fixture_b, tmp_path, capfd):
    frames = np.random.default_rng(1).integers(0, 256, (40, 36, 60, 3), dtype=np.uint8)  # non-square
    np.save(tmp_path / "frames.npy", frames)
    for extra in (
        [],
        ["--set", "mm_llm_compress=true"],
        ["--set", "mm_llm_compress=true", "--set", "llm_compress_type=uniform0_attention"],
    ):
        code = main(
            [
                "ask",
                str(tmp_path / "frames.npy"),
                "What moves?",
                "--model",
                str(fixture_b),
                "--fps",
                "5",
                "--max-new-tokens",
                "4",
                "--json",
                *extra,
            ]
        )
        out, err = capfd.readouterr()
        assert code == 0, err
        data = json.loads(out)
        assert data["num_frames"] % 8 == 0 and data["num_visual_tokens"] == 16 * data["num_frames"]


def test_8_frame_clips_and_compression_with_cache(fixture_b):
    m = longvid.load(fixture_b, overrides={"mm_llm_compress": True})
    assert m.model.vision_tower.position_table(8).shape == (1, 8 * 36, 48)
    frames = np.random.default_rng(2).integers(0, 256, (16, 36, 60, 3), dtype=np.uint8)
    visual = m.encode_video(m.open(frames, 4.0), m.sampling_plan(m.open(frames, 4.0)))
    assert visual.tokens.shape == (256, 72)
    ids = m.prompt_ids(m.conversation("What moves?", visual.plan))
    kept: list = []
    with torch.no_grad():
        full = m.model.llm.logits(m.model(ids, visual.tokens, kept_rows=kept).hidden[:, -1])[0]
        cache = m.new_cache()
        cached = m.prefill(ids, visual.tokens, cache)
    torch.testing.assert_close(full, cached)
    n_text = len(ids) - 1
    assert [len(r) for r in kept] == [n_text + 128, n_text + 64]
    assert cache.lengths == [n_text + 256] * 2 + [n_text + 128] + [n_text + 64] * 2


def test_sharded_checkpoint_loads_identically(fixture_b, tmp_path):
    import shutil

    sharded = tmp_path / "sharded"
    shutil.copytree(fixture_b, sharded)
    tensors = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(sharded / name))
        weight_map.update(dict.fromkeys(ks, name))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a, b = longvid.load(fixture_b), longvid.load(sharded)
    assert len(a.model.state_dict()) == len(b.model.state_dict()) > 0
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_release_key_names_round_trip(vcf_fixture):
    m = longvid.load(vcf_fixture / "checkpoint")
    released = set(load_file(str(vcf_fixture / "checkpoint" / "model.safetensors")))
    ours = {m.model.to_release_key(k) for k in m.model.state_dict()}
    assert ours == released


def test_bfloat16_load(tiny_checkpoint):
    m = longvid.load(tiny_checkpoint, dtype="bfloat16")
    answer = m.ask(np.zeros((8, 32, 32, 3), np.uint8), "q", input_fps=1, max_new_tokens=2)
    assert m.dtype == torch.bfloat16 and 1 <= len(answer.token_ids) <= 2 and answer.prompt_tokens > 0
