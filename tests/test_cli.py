"""`longvid ask`: output contract, and one clear line + exit code 2 for every kind of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np

from longvid.cli import main
from longvid.video.sampling import segment_middles


def run(args, capfd):
    code = main(args)
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code, err, needle):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err


def test_ask_json_contract(tiny_checkpoint, short_video, capfd):
    code, out, err = run(
        ["ask", str(short_video), "What moves?", "--model", str(tiny_checkpoint), "--max-new-tokens", "5", "--json"],
        capfd,
    )
    assert code == 0, err
    data = json.loads(out)
    assert len(data["token_ids"]) <= 5 and isinstance(data["text"], str)
    assert data["num_frames"] == 40  # 4 s video: the official sampler's floor is capped by its 40 frames
    assert data["num_visual_tokens"] == 16 * 40
    assert set(data["timings"]) >= {"decode", "encode", "prefill", "generate", "tokens_per_s"}


def test_ask_plain_text(tiny_checkpoint, short_video, capfd):
    code, out, _ = run(
        [
            "ask",
            str(short_video),
            "What moves?",
            "--model",
            str(tiny_checkpoint),
            "--max-new-tokens",
            "3",
            "--num-frames",
            "8",
            "--gen",
            "do_sample=true",
            "--gen",
            "seed=1",
        ],
        capfd,
    )
    assert code == 0 and out.endswith("\n")


def test_missing_video(tiny_checkpoint, capfd):
    assert_one_line_error(
        *run(["ask", "/no/such.mp4", "q", "--model", str(tiny_checkpoint)], capfd)[::2], "no such file"
    )


def test_text_file_renamed_mp4(tiny_checkpoint, tmp_path, capfd):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    assert_one_line_error(
        *run(["ask", str(fake), "q", "--model", str(tiny_checkpoint)], capfd)[::2], "not a readable video"
    )


def test_missing_model(short_video, capfd):
    assert_one_line_error(*run(["ask", str(short_video), "q", "--model", "/no/model"], capfd)[::2], "model not found")


def test_hub_id_offline(short_video, capfd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line_error(
        *run(["ask", str(short_video), "q", "--model", "nobody/no-such-model"], capfd)[::2],
        "could not download nobody/no-such-model",
    )


def test_unreadable_checkpoint(tiny_checkpoint, short_video, tmp_path, capfd):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(
        *run(["ask", str(short_video), "q", "--model", str(broken)], capfd)[::2], "unreadable weights"
    )


def test_unknown_tower_name(tiny_checkpoint, short_video, tmp_path, capfd):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_checkpoint, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["mm_vision_tower"] = "siglip-so400m"
    (odd / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(*run(["ask", str(short_video), "q", "--model", str(odd)], capfd)[::2], "unknown vision tower")
    assert_one_line_error(
        *run(
            ["ask", str(short_video), "q", "--model", str(tiny_checkpoint), "--set", "mm_vision_tower=vit-huge"], capfd
        )[::2],
        "unknown vision tower",
    )


def test_bad_set_and_gen(tiny_checkpoint, short_video, capfd):
    assert_one_line_error(
        *run(["ask", str(short_video), "q", "--model", str(tiny_checkpoint), "--set", "oops"], capfd)[::2],
        "--set expects KEY=VALUE",
    )
    assert_one_line_error(
        *run(
            [
                "ask",
                str(short_video),
                "q",
                "--model",
                str(tiny_checkpoint),
                "--set",
                "mm_llm_compress=true",
                "--set",
                "llm_compress_type=magic",
            ],
            capfd,
        )[::2],
        "llm_compress_type",
    )
    assert_one_line_error(
        *run(["ask", str(short_video), "q", "--model", str(tiny_checkpoint), "--gen", "max_new_tokens=0"], capfd)[::2],
        "max_new_tokens",
    )


def test_context_budget_is_refused_not_truncated(tiny_checkpoint, short_video, capfd):
    code, _, err = run(
        ["ask", str(short_video), "q", "--model", str(tiny_checkpoint), "--set", "tokenizer_model_max_length=300"],
        capfd,
    )
    assert_one_line_error(code, err, "exceed the model's context of 300")
    assert "--max-frames" in err


def test_console_script_entry_point(tiny_checkpoint):
    proc = subprocess.run(
        [sys.executable, "-m", "longvid", "ask", "/no/such.mp4", "q", "--model", str(tiny_checkpoint)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and proc.stdout == ""


def test_npy_input_uses_fps_as_frame_rate(tiny_checkpoint, tmp_path, capfd):
    frames = np.random.default_rng(0).integers(0, 256, (20, 30, 50, 3), dtype=np.uint8)
    np.save(tmp_path / "v.npy", frames)
    code, out, err = run(
        [
            "ask",
            str(tmp_path / "v.npy"),
            "q",
            "--model",
            str(tiny_checkpoint),
            "--fps",
            "2",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        capfd,
    )
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert plan["duration"] == 10.0  # 20 frames at 2 fps
    assert plan["indices"] == segment_middles(20, 16)  # the official floor: (20 // 8) * 8 frames
