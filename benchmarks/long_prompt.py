"""Long text after a video: peak RSS and prefill time for 8k / 32k / 64k-token questions (issue 17 acceptance).

The bundled model reads a synthetic video (its KV prefix), then a question of N tokens: the path that used to
build a [N, past + N] attention mask. Each case runs in a fresh subprocess so its peak RSS is its own; the
parent kills a case whose RSS passes --kill-gb (old code at 64k would take tens of GB). Targets: RSS grows
linearly with N (bytes per prompt token, against the KV cache's bytes per token), no case above 2 GB.

    python benchmarks/long_prompt.py                          # the code in this checkout
    python benchmarks/long_prompt.py --src OLD/src --label before   # the same cases on another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "long_prompt.json"
SENTENCE = "the small red square moves to the left while the blue circle waits near the top. "


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(tokens: int, frames: int, threads: int) -> None:
    """One case, printed as a JSON line: RSS and time of the prefill of a `tokens`-token question."""
    import numpy as np
    import torch

    import longvid
    from longvid.assets import default_model_path
    from longvid.data.synthetic import moving_shapes
    from longvid.pipeline import Pipeline
    from longvid.video import open_video

    torch.set_num_threads(threads)
    model = longvid.load(default_model_path())
    video = open_video(np.stack(list(moving_shapes(frames, 64, 64, seed=2))), fps=1.0)
    visual = model.encode_video(video, model.sampling_plan(video, num_frames=frames))
    per_rep = len(model.tokenizer.encode(SENTENCE * 8)) / 8
    question = SENTENCE * max(1, round(tokens / per_rep))
    ids = Pipeline(model).prompt(visual.plan, question).ids  # refused here if it does not fit
    cache = model.new_cache()
    before, setup_peak = rss_kb(), rss_kb(field="VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    with torch.no_grad():
        logits = model.prefill(ids, visual.tokens, cache)
    seconds = time.perf_counter() - start
    cfg = model.config.llm
    print(
        json.dumps(
            {
                "question_tokens": len(ids) - ids.index(-200) - 1,
                "prompt_tokens": len(ids) - 1 + visual.tokens.shape[0],
                "visual_tokens": visual.tokens.shape[0],
                "prefill_s": seconds,
                "rss_before_prefill_mb": before / 1024,
                "peak_rss_mb": rss_kb(field="VmHWM") / 1024,
                "process_peak_rss_mb": max(setup_peak, rss_kb(field="VmHWM")) / 1024,
                "kv_cache_mb": cache.nbytes() / 2**20,
                "kv_bytes_per_token": model.kv_bytes_per_token() * cfg.num_hidden_layers,
                "finite": bool(logits.isfinite().all()),
            }
        )
    )


def run_case(src: Path, tokens: int, frames: int, threads: int, kill_gb: float, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--child", str(tokens), "--frames", str(frames), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, peak, why = time.monotonic(), 0, None
    while proc.poll() is None:
        try:
            peak = max(peak, rss_kb(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        if peak > kill_gb * 2**20:
            why = f"killed: RSS passed {kill_gb:g} GB"
        elif time.monotonic() - start > timeout:
            why = f"killed: over {timeout:g} s"
        if why:
            proc.kill()
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    if why or proc.returncode:
        return {
            "question_tokens": tokens,
            "failed": why or err.strip().splitlines()[-1][:200],
            "observed_peak_rss_mb": peak / 1024,
            "wall_s": time.monotonic() - start,
        }
    return json.loads(out.strip().splitlines()[-1])


def machine() -> dict:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def git_commit(src: Path) -> str:
    proc = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--frames", type=int, default=64, help="video frames before the question (16 tokens each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the longvid sources to measure")
    parser.add_argument("--label", default="current")
    parser.add_argument("--kill-gb", type=float, default=6.0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.frames, args.threads)
        return 0

    rows = []
    for tokens in args.tokens:
        row = run_case(args.src.resolve(), tokens, args.frames, args.threads, args.kill_gb, args.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    ok = [r for r in rows if "failed" not in r]
    first = ok[0] if ok else None
    for r in ok:  # memory the prefill added per question token, beyond the smallest case (fixed costs cancel)
        r["mb_over_smallest"] = r["peak_rss_mb"] - first["peak_rss_mb"]
        if r is not first:
            grown = (r["peak_rss_mb"] - first["peak_rss_mb"]) * 2**20
            r["bytes_per_token"] = grown / (r["question_tokens"] - first["question_tokens"])

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Prefill of a long question after a {args.frames}-frame video, bundled tiny model "
        f"({args.label}, {args.threads} threads)"
    )
    for col in ("question tokens", "prefill s", "peak RSS MB", "KV cache MB", "RSS B/token", "KV B/token", "note"):
        table.add_column(col, justify="right")
    for r in rows:
        if "failed" in r:
            table.add_row(
                str(r["question_tokens"]),
                f"> {r['wall_s']:.0f}",
                f"> {r['observed_peak_rss_mb']:.0f}",
                "",
                "",
                "",
                r["failed"],
            )
            continue
        per_token = f"{r['bytes_per_token']:.0f}" if "bytes_per_token" in r else "-"
        table.add_row(
            str(r["question_tokens"]),
            f"{r['prefill_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['kv_cache_mb']:.0f}",
            per_token,
            str(r["kv_bytes_per_token"]),
            "",
        )
    Console(width=150).print(table)

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["model"] = "bundled tiny model (src/longvid/assets/tiny_model)"
    results["peak_rss"] = (
        "VmHWM of a fresh process per case, reset just before the prefill (so it includes the "
        "loaded model and the encoded video); bytes_per_token: peak growth per question token "
        "beyond the smallest case, to compare with kv_bytes_per_token"
    )
    results["machine"] = machine()
    settings = {
        "frames": args.frames,
        "question_tokens": args.tokens,
        "threads": args.threads,
        "kill_gb": args.kill_gb,
        "timeout_s": args.timeout,
    }
    results.setdefault("runs", {})[args.label] = {"commit": git_commit(args.src), "settings": settings, "cases": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    limit_ok = all("failed" not in r and r["peak_rss_mb"] <= 2048 for r in rows)
    return 0 if limit_ok or args.label != "current" else 1


if __name__ == "__main__":
    sys.exit(main())
