"""Chat benchmark (issue: encode once per chat): latency of the first vs the second question.

A 512-frame input (a 60 s synthetic H.264 video sampled uniformly) and the tiny parity checkpoint:
the first question decodes and encodes the video and prefills it; the second reuses the encoded
tokens and the video's KV prefix. Both generate the same number of tokens. Measured in one run.

    python benchmarks/chat_latency.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import longvid
from longvid.data.synthetic import moving_shapes, write_video

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "parity" / "videochat_flash_tiny" / "checkpoint"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    parser.add_argument("--model", default=str(FIXTURE))
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    video = args.out / "chat_60s.mp4"
    if not video.exists():
        write_video(video, moving_shapes(30 * 60, 224, 224, seed=1), fps=30)
    table = Table(title=f"Chat latency, {args.frames}-frame input, tiny parity model")
    for col in ("compression", "1st question (s)", "2nd question (s)", "3rd question (s)", "2nd / 1st"):
        table.add_column(col, justify="right")
    results = []
    for name, overrides in (
        ("ToMe only", {}),
        (
            "ToMe + uniform drop",
            {
                "mm_llm_compress": True,
                "llm_compress_type": "uniform",
                "llm_compress_layer_list": [2],
                "llm_image_token_ratio_list": [1, 0.5],
            },
        ),
        (
            "ToMe + attention drop",
            {
                "mm_llm_compress": True,
                "llm_compress_type": "attention",
                "llm_compress_layer_list": [2],
                "llm_image_token_ratio_list": [1, 0.5],
            },
        ),
    ):
        model = longvid.load(args.model, overrides=overrides)
        gen = {"max_new_tokens": args.max_new_tokens, "repetition_penalty": 1.0}
        times = []
        t = time.perf_counter()
        session = model.session(video, num_frames=args.frames)
        session.ask("What moves in the video?", gen=gen)
        times.append(time.perf_counter() - t)
        for q in ("What colour is it?", "Where does it go?"):
            t = time.perf_counter()
            session.ask(q, gen=gen)
            times.append(time.perf_counter() - t)
        results.append({"compression": name, "seconds": times, "ratio": times[1] / times[0]})
        table.add_row(name, f"{times[0]:.2f}", f"{times[1]:.3f}", f"{times[2]:.3f}", f"{times[1] / times[0]:.3f}")
    Console().print(table)
    (args.out / "chat_latency.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
