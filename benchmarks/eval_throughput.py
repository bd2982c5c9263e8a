"""Eval throughput: questions per minute of `longvid eval` on a synthetic MVBench-layout set, 1 vs 2 processes.

100 questions (10 per video, 10 generated 4 s videos) with the bundled tiny model on CPU. Each run is a
fresh `longvid eval` (model loading and process start included, as a user sees it); questions on the
same video reuse its encoding through the feature cache. Writes benchmarks/results/eval_throughput.json.

    python benchmarks/eval_throughput.py [--questions 100] [--videos 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from longvid.data.synthetic import moving_shapes, write_video

REPO = Path(__file__).resolve().parents[1]


def make_set(root: Path, questions: int, videos: int) -> Path:
    folder = root / "video" / "clevrer" / "video_validation"
    folder.mkdir(parents=True, exist_ok=True)
    for v in range(videos):
        path = folder / f"v{v}.mp4"
        if not path.exists():
            write_video(path, moving_shapes(40, 96, 128, seed=v), fps=10)
    items = [
        {
            "video": f"v{i % videos}.mp4",
            "question": f"Is there a moving object number {i}?",
            "candidates": ["yes", "no", "maybe"],
            "answer": "yes",
        }
        for i in range(questions)
    ]
    (root / "json").mkdir(exist_ok=True)
    (root / "json" / "object_existence.json").write_text(json.dumps(items))
    return root


def run(data: Path, out: Path, nproc: int, max_frames: int, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "longvid",
        "eval",
        "mvbench",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-frames",
        str(max_frames),
        "--nproc",
        str(nproc),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return time.perf_counter() - t0


def answers(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [(r["id"], r["output"], r["score"]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--max-frames", type=int, default=16)
    # the same torch threads per process in both runs: on a loaded machine, more threads than free cores make
    # one process far slower, which would be measured instead of the sharding
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench" / "eval_throughput")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "eval_throughput.json")
    args = parser.parse_args()
    data = make_set(args.work / "data", args.questions, args.videos)
    rows = []
    for nproc in (1, 2):
        seconds = run(data, args.work / f"out{nproc}", nproc, args.max_frames, args.threads)
        preds = [
            json.loads(line) for line in (args.work / f"out{nproc}" / "predictions.jsonl").read_text().splitlines()
        ]
        rows.append(
            {
                "processes": nproc,
                "questions": len(preds),
                "seconds": round(seconds, 2),
                "questions_per_minute": round(60 * len(preds) / seconds, 1),
                "cache_hits": sum(bool(p.get("cache_hit")) for p in preds),
            }
        )
    same = answers(args.work / "out1") == answers(args.work / "out2")
    result = {
        "benchmark": "eval_throughput",
        "model": "bundled tiny model",
        "device": "cpu",
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "threads_per_process": args.threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "videos": args.videos,
        "max_frames": args.max_frames,
        "runs": rows,
        "identical_predictions": same,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(
        title=f"longvid eval throughput, {args.questions} questions on {args.videos} videos (CPU, tiny model)"
    )
    for col in ("processes", "seconds", "questions/min", "feature-cache hits"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["processes"]), f"{r['seconds']:.1f}", f"{r['questions_per_minute']:.1f}", str(r["cache_hits"])
        )
    Console().print(table)
    print(f"identical predictions with 1 and 2 processes: {same}; wrote {args.results}")


if __name__ == "__main__":
    main()
