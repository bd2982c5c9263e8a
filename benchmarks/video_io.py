"""Video input benchmark (issue: hour-long input).

1. Sampling 64 / 512 / 2048 frames from a synthetic 1-hour H.264 file (30 fps, keyframe every 250
   frames, 3 B-frames, every frame carrying its index as a block code): longvid's reader vs a full
   sequential decode (as the official PyAV reader does it, converting every frame to RGB; and a lean
   variant converting only the wanted frames) vs the ffmpeg CLI seeking once per frame (if installed).
   Wrong frames are counted by reading the index back from every returned frame.
2. Peak RSS of `longvid encode` on the tiny parity checkpoint at 1,000 / 5,000 / 10,000 frames of
   448 px input, each in a fresh process.

    python benchmarks/video_io.py [--out out/bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from longvid.data.synthetic import index_frames, read_index, write_video
from longvid.video import open_video

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "parity" / "videochat_flash_tiny" / "checkpoint"
HOUR_FRAMES = 30 * 3600


def hour_video(out: Path) -> Path:
    path = out / "hour_h264.mp4"
    if not path.exists():
        t = time.perf_counter()
        write_video(path, index_frames(HOUR_FRAMES, 64, 96), fps=30, gop=250, bframes=3, crf=30)
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t:.0f} s", file=sys.stderr
        )
    return path


def wanted(n: int) -> list[int]:
    return np.linspace(0, HOUR_FRAMES - 1, n).round().astype(int).tolist()


def ours(path: Path, indices: list[int]) -> tuple[float, int]:
    t = time.perf_counter()
    video = open_video(path)
    wrong = sum(read_index(f) != i for i, f in zip(indices, video.frames(indices)))
    video.close()
    return time.perf_counter() - t, wrong


def full_decode(path: Path, sets: dict[int, list[int]]) -> tuple[float, float, dict[int, int]]:
    """One sequential pass serves every N. Returns (seconds when every frame is converted to RGB, as the
    official PyAV reader does; seconds when only the wanted frames are converted; wrong frames per N)."""
    import av
    from av.video.reformatter import VideoReformatter

    want = {i for idx in sets.values() for i in idx}
    got: dict[int, int] = {}
    t = time.perf_counter()
    with av.open(str(path)) as c:
        for n, frame in enumerate(c.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24")  # what the official reader does for every frame
            if n in want:
                got[n] = read_index(rgb)
    convert_all = time.perf_counter() - t
    t = time.perf_counter()
    rgb = VideoReformatter()
    with av.open(str(path)) as c:
        for n, frame in enumerate(c.decode(video=0)):
            if n in want:
                rgb.reformat(frame, format="rgb24").to_ndarray()
    convert_wanted = time.perf_counter() - t
    wrong = {n: sum(got.get(i) != i for i in idx) for n, idx in sets.items()}
    return convert_all, convert_wanted, wrong


def ffmpeg_seek(path: Path, indices: list[int], budget_s: float = 180.0) -> tuple[float | None, int | None]:
    if shutil.which("ffmpeg") is None:
        return None, None
    t, wrong = time.perf_counter(), 0
    for i in indices:
        raw = subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-ss",
                f"{i / 30:.6f}",
                "-i",
                str(path),
                "-frames:v",
                "1",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-",
            ],
            capture_output=True,
        ).stdout
        frame = np.frombuffer(raw[: 64 * 96 * 3], np.uint8).reshape(64, 96, 3) if len(raw) >= 64 * 96 * 3 else None
        wrong += frame is None or read_index(frame) != i
        if time.perf_counter() - t > budget_s:
            return None, None
    return time.perf_counter() - t, wrong


def peak_rss_encode(video: Path, frames: int, out: Path) -> tuple[float, float]:
    """(peak RSS MiB, wall seconds) of `longvid encode` in a fresh process."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        f"r = subprocess.run([sys.executable, '-m', 'longvid', 'encode', {str(video)!r}, '--model', {str(FIXTURE)!r}, "
        f"'--num-frames', '{frames}', '--out', {str(out / f'enc{frames}.safetensors')!r}], capture_output=True); "
        "assert r.returncode == 0, r.stderr.decode(); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t)"
    )
    rss, secs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(rss), float(secs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    results: dict = {"sampling": [], "encode_rss": []}

    path = hour_video(args.out)
    sets = {n: wanted(n) for n in (64, 512, 2048)}
    convert_all, convert_wanted, full_wrong = full_decode(path, sets)
    table = Table(title="Sampling frames from a 1-hour H.264 video (108,000 frames, GOP 250, 3 B-frames)")
    for col in (
        "frames",
        "longvid s",
        "wrong",
        "full decode, RGB all s",
        "wrong",
        "speed-up",
        "full decode, RGB wanted s",
        "speed-up",
        "ffmpeg -ss s",
        "wrong",
    ):
        table.add_column(col, justify="right")
    for n, idx in sets.items():
        t_ours, w_ours = ours(path, idx)
        t_ff, w_ff = ffmpeg_seek(path, idx)
        results["sampling"].append(
            dict(
                frames=n,
                longvid_s=t_ours,
                longvid_wrong=w_ours,
                full_decode_convert_all_s=convert_all,
                full_wrong=full_wrong[n],
                full_decode_convert_wanted_s=convert_wanted,
                speedup_vs_convert_all=convert_all / t_ours,
                speedup_vs_convert_wanted=convert_wanted / t_ours,
                ffmpeg_s=t_ff,
                ffmpeg_wrong=w_ff,
            )
        )
        table.add_row(
            str(n),
            f"{t_ours:.2f}",
            str(w_ours),
            f"{convert_all:.1f}",
            str(full_wrong[n]),
            f"{convert_all / t_ours:.1f}x",
            f"{convert_wanted:.1f}",
            f"{convert_wanted / t_ours:.1f}x",
            "n/a" if t_ff is None else f"{t_ff:.1f}",
            "n/a" if w_ff is None else str(w_ff),
        )
    console.print(table)

    if not args.skip_rss and FIXTURE.is_dir():
        big = args.out / "video_448px_10k.mp4"
        if not big.exists():
            write_video(big, index_frames(10_000, 448, 448), fps=30, gop=250, bframes=3, crf=30)
        table = Table(title="Peak RSS of `longvid encode` (tiny parity checkpoint, 448 px input)")
        for col in ("frames", "peak RSS (MiB)", "vs 1,000", "wall (s)"):
            table.add_column(col, justify="right")
        base = None
        for n in (1000, 5000, 10_000):
            rss, secs = peak_rss_encode(big, n, args.out)
            base = base or rss
            results["encode_rss"].append(dict(frames=n, peak_rss_mib=rss, ratio=rss / base, seconds=secs))
            table.add_row(f"{n:,}", f"{rss:.0f}", f"{rss / base:.2f}x", f"{secs:.0f}")
        console.print(table)
    (args.out / "video_io.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
