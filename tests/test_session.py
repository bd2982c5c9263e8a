"""Chat sessions: encode once, reuse the video prefill, and answer exactly like fresh calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import longvid
from longvid.session import FeatureCache

QUESTIONS = [
    "What shape moves across the frames, and what color is it?",
    "What is shown in this picture?",
    "Describe the video.",
]
SETTINGS = {
    "none": {},
    "uniform": {
        "mm_llm_compress": True,
        "llm_compress_type": "uniform",
        "llm_compress_layer_list": [1, 2],
        "llm_image_token_ratio_list": [1, 0.5, 0.25],
    },
    "attention": {
        "mm_llm_compress": True,
        "llm_compress_type": "uniform0_attention",
        "llm_compress_layer_list": [1, 2],
        "llm_image_token_ratio_list": [1, 0.75, 0.25],
    },
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_session_equals_fresh_calls_over_three_turns(vcf_fixture, setting):
    m = longvid.load(vcf_fixture / "checkpoint", overrides=SETTINGS[setting])
    frames = np.load(vcf_fixture / "inputs" / "frames.npy")
    session = m.session(frames, input_fps=4.0)
    history = []
    for q in QUESTIONS:
        got = session.ask(q, max_new_tokens=12)
        fresh = m.answer(session.visual, q, history=history, max_new_tokens=12)  # a fresh call, same history
        assert got.token_ids == fresh.token_ids and got.text == fresh.text
        history.append((q, fresh.text))
    assert session.stats.encodes == 1 and session.stats.turns == 3
    assert session.stats.video_prefills == (3 if setting == "attention" else 1)
    if setting == "none":  # the first turn is the official chat() answer
        meta = json.loads((vcf_fixture / "expected" / "meta.json").read_text())
        assert session.history[0][1] == meta["generation_text"]["chat_nocompress"].strip()


def test_video_is_decoded_once(tiny_model, short_video):
    video = tiny_model.open(short_video)
    calls = []
    original = video.frames
    video.frames = lambda idx: (calls.append(len(idx)), original(idx))[1]
    session = tiny_model.session(video, num_frames=16)
    for q in ("one?", "two?", "three?"):
        session.ask(q, max_new_tokens=3)
    session.reset()
    session.ask("again?", max_new_tokens=3)
    assert (
        calls == [16] and session.stats.video_prefills == 1 and session.history == [("again?", session.history[0][1])]
    )


def test_memory_feature_cache_is_shared(tiny_model, short_video):
    cache = FeatureCache()
    a = tiny_model.session(short_video, cache=cache, num_frames=8)
    b = tiny_model.session(short_video, cache=cache, num_frames=8)
    c = tiny_model.session(short_video, cache=cache, num_frames=12)  # other sampling: another entry
    assert (a.stats.cache_hit, b.stats.cache_hit, c.stats.cache_hit) == (False, True, False)
    assert b.visual is a.visual and cache.hits == 1


def test_disk_cache_hit_in_a_second_process(tiny_checkpoint, short_video, tmp_path):
    def run():
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "longvid",
                "ask",
                str(short_video),
                "What moves?",
                "--model",
                str(tiny_checkpoint),
                "--num-frames",
                "16",
                "--max-new-tokens",
                "4",
                "--json",
                "--cache-dir",
                str(tmp_path / "cache"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first, second = run(), run()
    assert first["feature_cache"] == "miss" and second["feature_cache"] == "hit"
    assert second["token_ids"] == first["token_ids"]
    assert second["timings"]["decode"] == 0.0 and second["timings"]["encode"] == 0.0
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_budget_is_checked_before_decoding(tiny_checkpoint, short_video):
    from longvid.errors import BudgetError

    m = longvid.load(tiny_checkpoint, overrides={"tokenizer_model_max_length": 200})
    video = m.open(short_video)
    video.frames = lambda idx: pytest.fail("decoded despite the budget")
    with pytest.raises(BudgetError, match="sample at most"):
        m.session(video, num_frames=16)
    with pytest.raises(BudgetError, match="exceed the model's context of 200"):
        m.ask(video, "q", num_frames=16)


def test_chat_in_a_terminal(tiny_checkpoint, short_video):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "longvid",
            "chat",
            str(short_video),
            "--model",
            str(tiny_checkpoint),
            "--num-frames",
            "8",
            "--max-new-tokens",
            "6",
        ],
        encoding="utf-8",
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb"},
    )
    child.expect(r"8 frames -> 128 visual tokens")
    child.expect(">>> ")
    child.sendline("What moves across the frames?")
    child.expect(">>> ")
    first = child.before
    child.sendline("/timings")
    child.expect(r"timings on")
    child.expect(">>> ")
    child.sendline("And what colour is it?")
    child.expect(r"\[decode 0.00 s, encode 0.00 s, prefill")
    child.expect(">>> ")
    child.sendline("/info")
    child.expect(r'"video_prefills": 1')
    child.expect(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "What moves across the frames?" in first and len(first.strip().splitlines()) >= 2
