"""Streaming encode equals the all-at-once path; features files round-trip; `info` reports budgets."""

from __future__ import annotations

import json

import pytest
import torch

import longvid
from longvid.cli import main
from longvid.errors import InputError
from longvid.features import load_features, read_metadata, save_features
from longvid.video import open_video


def test_streaming_equals_all_at_once(tiny_model, short_video):
    v = open_video(short_video)
    plan = tiny_model.sampling_plan(v, num_frames=24)
    all_pixels = tiny_model.pixels(v.read(plan.indices))
    with torch.no_grad():
        at_once = torch.cat([tiny_model.encode_pixels(all_pixels[i : i + 8], plan) for i in range(0, 24, 8)])
    streamed = tiny_model.encode_video(v, plan, batch_frames=8).tokens
    assert torch.equal(streamed, at_once)
    other_batch = tiny_model.encode_video(v, plan, batch_frames=20).tokens
    torch.testing.assert_close(other_batch, at_once, atol=1e-5, rtol=1e-5)


def test_encode_holds_one_batch_of_frames(tiny_model, short_video):
    """The frame iterator is consumed batch by batch, never materialised whole."""
    v = open_video(short_video)
    plan = tiny_model.sampling_plan(v, num_frames=32)
    live, peak = 0, 0
    original = v.frames

    def counting(indices):
        nonlocal live, peak
        for frame in original(indices):
            live += 1
            peak = max(peak, live)
            yield frame

    v.frames = counting
    real_pixels = tiny_model.pixels

    def release(batch):
        nonlocal live
        live -= len(batch)
        return real_pixels(batch)

    tiny_model.pixels = release
    try:
        tiny_model.encode_video(v, plan, batch_frames=8)
    finally:
        del tiny_model.pixels
    assert 4 <= peak <= 8  # at least one clip of 4 frames was decoded, never more than 2 clips at once


def test_features_round_trip_and_ask(tiny_model, short_video, tmp_path, capfd):
    out = tmp_path / "f.safetensors"
    code = main(
        ["encode", str(short_video), "--model", str(tiny_model.folder), "--out", str(out), "--num-frames", "16"]
    )
    assert code == 0, capfd.readouterr().err
    meta = read_metadata(out)
    assert (
        meta["family"] == "videochat_flash"
        and json.loads(meta["plan"])["indices"]
        == tiny_model.sampling_plan(open_video(short_video), num_frames=16).indices
    )
    visual = load_features(out, tiny_model)
    assert visual.tokens.shape == (256, 64) and visual.num_frames == 16
    direct = tiny_model.ask(short_video, "What moves?", num_frames=16, max_new_tokens=6)
    capfd.readouterr()
    code = main(
        [
            "ask",
            "--features",
            str(out),
            "What moves?",
            "--model",
            str(tiny_model.folder),
            "--max-new-tokens",
            "6",
            "--json",
        ]
    )
    data = json.loads(capfd.readouterr().out)
    assert code == 0 and data["token_ids"] == direct.token_ids and data["num_frames"] == 16


def test_features_from_another_model_are_refused(tiny_model, short_video, tmp_path):
    from longvid.tiny import make_checkpoint, tiny_videochat_flash_config

    other = longvid.load(make_checkpoint(tmp_path / "other", tiny_videochat_flash_config(512, image_size=32)))
    v = open_video(short_video)
    path = save_features(tmp_path / "o.safetensors", other.encode_video(v, other.sampling_plan(v, num_frames=8)), other)
    with pytest.raises(InputError, match="different model"):
        load_features(path, tiny_model)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a longvid features file"):
        load_features(tmp_path / "junk.safetensors", tiny_model)


def test_info_reports_plan_tokens_and_kv(tiny_checkpoint, short_video, capfd):
    code = main(["info", str(short_video), "--model", str(tiny_checkpoint), "--num-frames", "16", "--json"])
    report = json.loads(capfd.readouterr().out)
    assert code == 0
    assert report["video"]["num_frames"] == 40 and report["video"]["fps"] == 10.0 and report["video"]["codec"] == "h264"
    assert len(report["plan"]["indices"]) == 16 and report["budget"]["visual_tokens"] == 256
    b = report["budget"]
    kv_per_token = 2 * 2 * 16 * 4  # K and V, 2 kv heads, head_dim 16, fp32
    assert b["kv_bytes"] == sum(b["kv_tokens_per_layer"]) * kv_per_token
    assert b["fits"] and b["context_tokens"] == 256 + b["text_tokens"]
    code = main(
        [
            "info",
            str(short_video),
            "--model",
            str(tiny_checkpoint),
            "--num-frames",
            "16",
            "--json",
            "--set",
            "mm_llm_compress=true",
            "--set",
            "llm_compress_layer_list=[2]",
        ]
    )
    report = json.loads(capfd.readouterr().out)
    text = report["budget"]["text_tokens"]
    assert report["budget"]["kv_tokens_per_layer"] == [text + 256] * 2 + [text + 128] * 2
    code = main(["info", str(short_video), "--model", str(tiny_checkpoint)])
    out = capfd.readouterr().out
    assert code == 0 and "visual tokens" in out and "KV cache" in out and "videochat_flash" in out
