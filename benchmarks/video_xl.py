"""Video-XL prefill cost: peak RSS and time at 256 / 1024 / 2048 frames, beacon ratio 2 / 8 / 16 vs no compression.

    .venv/bin/python benchmarks/video_xl.py [--frames 256 1024 2048] [--modes off 2 8 16] [--threads 1]

It measures the LLM side only: a tiny random Video-XL checkpoint (16 visual tokens per frame, windows of
10 frames like the release's 1440 = 10 x 144) is fed pre-generated visual tokens, so no video is decoded
and no CLIP runs. Every configuration runs in a fresh subprocess, so each peak RSS is its own.
Torch uses one thread by default: on a shared 2-core machine, OpenMP threads waiting for each other
make the many small ops of window steps up to 10x slower and the timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = dict(
    hidden=256,
    layers=4,
    heads=8,
    kv_heads=4,
    intermediate=512,
    window=160,
    ratios=[8],
    max_position_embeddings=65536,
    tokenizer_model_max_length=65536,
)


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak so far) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(ckpt: str, frames: int, mode: str, threads: int) -> dict:
    import torch

    import longvid
    from longvid.video import SamplingPlan

    torch.set_num_threads(threads)
    overrides = {"enable_beacon": False} if mode == "off" else {"beacon_ratio": [int(mode)]}
    m = longvid.load(ckpt, overrides=overrides)
    n = frames * m.config.tokens_per_frame
    visual = torch.randn(n, m.config.llm.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.5
    plan = SamplingPlan(list(range(frames)), 1.0, float(frames), frames)
    ids = m.prompt_ids(m.conversation("What happens in the video?", plan))
    before = rss_mib("VmHWM")
    cache = m.new_cache()
    start = time.perf_counter()
    with torch.no_grad():
        m.prefill(ids, visual, cache)
    seconds = time.perf_counter() - start
    return {
        "frames": frames,
        "visual_tokens": n,
        "mode": mode,
        "kv_tokens": cache.length(0),
        "kv_mib": cache.nbytes() / 2**20,
        "prefill_s": seconds,
        "peak_rss_mib": rss_mib("VmHWM"),
        "rss_before_mib": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--modes", nargs="+", default=["off", "2", "8", "16"], help="'off' or a ratio")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measurement")
    parser.add_argument("--worker", nargs=3, metavar=("CKPT", "FRAMES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        ckpt, frames, mode = args.worker
        print(json.dumps(worker(ckpt, int(frames), mode, args.threads)))
        return

    from longvid.tiny import make_tiny_video_xl

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_video_xl(Path(tmp) / "video_xl_bench", **MODEL)
        print(
            f"tiny Video-XL: hidden {MODEL['hidden']}, {MODEL['layers']} layers, {MODEL['heads']} heads / "
            f"{MODEL['kv_heads']} KV heads, 16 tokens per frame, windows of {MODEL['window']} tokens; float32, "
            f"{args.threads} torch thread(s) on {os.cpu_count()} CPU cores\n"
        )
        header = (
            f"{'frames':>6} {'visual':>7} {'mode':>5} {'KV tokens':>9} {'KV MiB':>8} {'prefill s':>9} "
            f"{'peak RSS MiB':>12} {'+ in prefill':>12}"
        )
        print(header)
        print("-" * len(header))
        for frames in args.frames:
            for mode in args.modes:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--worker",
                        str(ckpt),
                        str(frames),
                        mode,
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if proc.returncode:
                    print(f"{frames:>6} {mode:>13}  failed: {proc.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(proc.stdout)
                label = "off" if mode == "off" else f"r={mode}"
                print(
                    f"{frames:>6} {r['visual_tokens']:>7} {label:>5} {r['kv_tokens']:>9} {r['kv_mib']:>8.1f} "
                    f"{r['prefill_s']:>9.2f} {r['peak_rss_mib']:>12.0f} "
                    f"{r['peak_rss_mib'] - r['rss_before_mib']:>12.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
