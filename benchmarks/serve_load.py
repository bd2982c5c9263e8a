"""Load test of `longvid serve` (issue 7): N concurrent clients x M requests on loopback.

Starts the real server (`python -m longvid serve` in a subprocess, free loopback port) on a tiny random
checkpoint, warms it up (the first request encodes the video, later ones hit the feature cache; one
round of concurrent requests brings up the thread pools), then `--clients` clients send
`--requests` chat requests in total about a small H.264 clip by file URL, each client waiting for
its answer before sending the next (and, after a 429, for the Retry-After it was given). Prints
throughput, p50/p95 latency, the count of each status code, the server's RSS after warm-up and after
the run, and a final /health check. Bounded: a fixed number of requests, a per-request timeout, and
`--time-limit` after which no request is started.

    python benchmarks/serve_load.py                    # 16 clients, 200 requests, the server's defaults
    python benchmarks/serve_load.py --max-queue 4      # a small queue: expect 429s, never 5xx

Acceptance (exit code 1 otherwise): no 5xx and no transport errors, every request answered 200 or
429, RSS after the run within 10% of RSS after warm-up, /health still answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from longvid.data.synthetic import moving_shapes, write_video
from longvid.serve.process import ServerProcess
from longvid.tiny import make_checkpoint, tiny_videochat_flash_config

QUESTIONS = [
    "Describe the video.",
    "What shape moves across the frames?",
    "What color is it?",
    "Where does it go?",
    "Which shape appears in the video?",
]


async def run_load(
    url: str, clients: int, requests: int, video: dict, max_tokens: int, time_limit: float
) -> list[tuple[str, float]]:
    """(status, seconds) per request; status is the HTTP code or the transport error's name."""
    results: list[tuple[str, float]] = []
    issued = 0
    stop_at = time.monotonic() + time_limit

    async def client(k: int) -> None:
        nonlocal issued
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while issued < requests and time.monotonic() < stop_at:
                issued += 1
                question = {"type": "text", "text": QUESTIONS[(issued + k) % len(QUESTIONS)]}
                payload = {"max_tokens": max_tokens, "messages": [{"role": "user", "content": [video, question]}]}
                t = time.perf_counter()
                try:
                    response = await http.post("/chat/completions", json=payload)
                except httpx.HTTPError as e:
                    results.append((type(e).__name__, time.perf_counter() - t))
                    continue
                results.append((str(response.status_code), time.perf_counter() - t))
                if response.status_code == 429:  # a polite client waits as told before its next request
                    await asyncio.sleep(float(response.headers.get("Retry-After", 1)))

    await asyncio.gather(*(client(k) for k in range(clients)))
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=16, help="Requests before the RSS baseline.")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=None, help="Server setting (default: its own).")
    parser.add_argument("--max-queue", type=int, default=None, help="Server setting (default: its own).")
    parser.add_argument("--time-limit", type=float, default=600.0, help="Seconds after which no request starts.")
    parser.add_argument("--model", type=Path, default=None, help="Checkpoint (default: a tiny random one).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    model = args.model or make_checkpoint(work / "tiny", tiny_videochat_flash_config(512))
    media = work / "media"
    media.mkdir()
    write_video(media / "clip.mp4", moving_shapes(40, 48, 64), fps=10, gop=12)
    server_args = ["--media-root", media, "--log-level", "warning"]
    for flag, value in (("--max-concurrency", args.max_concurrency), ("--max-queue", args.max_queue)):
        if value is not None:
            server_args += [flag, value]
    video = {"type": "video_url", "video_url": {"url": f"file://{media}/clip.mp4"}, "nframes": args.frames}

    console = Console()
    with ServerProcess(model, *server_args, log=work / "server.log") as server:
        proc = psutil.Process(server.pid)
        warm = asyncio.run(
            run_load(server.base_url, args.clients, args.warmup, video, args.max_tokens, args.time_limit)
        )
        rss_warm = proc.memory_info().rss
        started = time.perf_counter()
        results = asyncio.run(
            run_load(server.base_url, args.clients, args.requests, video, args.max_tokens, args.time_limit)
        )
        wall = time.perf_counter() - started
        rss_after = proc.memory_info().rss
        final = httpx.get(f"{server.url}/health", timeout=10)
        health = final.json() if final.status_code == 200 else {}
        server_log = server.log_text()

    counts = Counter(status for status, _ in results)
    ok = [s for status, s in results if status == "200"]
    everything = [s for _, s in results]
    table = Table(
        title=f"longvid serve: {args.clients} clients, {len(results)} requests, tiny model, "
        f"{args.frames} frames, {args.max_tokens} tokens"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("wall time (s)", f"{wall:.1f}"),
        ("throughput (answered 200 / s)", f"{len(ok) / wall:.2f}"),
        ("throughput (all responses / s)", f"{len(results) / wall:.2f}"),
        ("latency p50, 200s (s)", f"{percentile(ok, 50):.3f}"),
        ("latency p95, 200s (s)", f"{percentile(ok, 95):.3f}"),
        ("latency p50, all (s)", f"{percentile(everything, 50):.3f}"),
        ("latency p95, all (s)", f"{percentile(everything, 95):.3f}"),
        *((f"status {status}", str(n)) for status, n in sorted(counts.items())),
        ("warm-up statuses", ", ".join(f"{k}: {v}" for k, v in sorted(Counter(s for s, _ in warm).items()))),
        ("server RSS after warm-up (MiB)", f"{rss_warm / 2**20:.1f}"),
        ("server RSS after the run (MiB)", f"{rss_after / 2**20:.1f}"),
        ("RSS change", f"{(rss_after / rss_warm - 1) * 100:+.1f}%"),
        ("final /health", f"{final.status_code} {health.get('status', '')}"),
        ("server jobs", json.dumps(health.get("jobs", {}))),
        ("server requests", json.dumps(health.get("requests", {}))),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)

    checks = {
        "no 5xx or transport errors": all(s in ("200", "429") for s in counts),
        "every request answered": len(results) == args.requests,
        "RSS within 10% of warm-up": abs(rss_after / rss_warm - 1) <= 0.10,
        "/health answers": final.status_code == 200 and health.get("status") == "ok",
        "no traceback in the server log": "Traceback" not in server_log,
    }
    for name, passed in checks.items():
        console.print(f"{'PASS' if passed else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rows": dict(rows),
                    "statuses": counts,
                    "checks": checks,
                },
                indent=2,
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
