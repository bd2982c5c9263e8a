"""Load test of `longvid serve`, both engines side by side: N concurrent clients x M requests on loopback.

For each engine (`--engine longvid`: one request at a time on the model thread; `--engine vllm`: vLLM's
async engine batching every request in flight) it starts the real server (`python -m longvid serve` in
a subprocess, free loopback port; the vLLM one with the Python of `--vllm-python`, the environment
`make setup-vllm` builds) on the same tiny random VideoChat-Flash checkpoint (head_dim 32, which vLLM's
CPU attention needs), warms it up, then `--clients` clients send `--requests` chat requests in total
about a small H.264 clip by file URL, each client waiting for its answer before sending the next (and,
after a 429, for the Retry-After it was given). Prints requests/s, p50/p95 latency and generated
tokens/s per engine side by side, with the status codes, RSS (server plus its child processes) and a
final /health check. Bounded: a fixed number of requests, a per-request timeout, and `--time-limit`
after which no request is started.

    python benchmarks/serve_load.py                          # both engines (vLLM when its venv exists)
    python benchmarks/serve_load.py --engines longvid        # longvid's engine only
    python benchmarks/serve_load.py --max-queue 4            # a small queue: expect 429s, never 5xx

Acceptance (exit code 1 otherwise), per engine: no 5xx and no transport errors, every request answered
200 or 429, /health still answering, no traceback in the server log; for longvid's engine also RSS
after the run within 10% of RSS after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
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

HERE = Path(__file__).resolve().parent
VLLM_PYTHON = HERE.parent / ".venv-vllm" / "bin" / "python"
QUESTIONS = [
    "Describe the video.",
    "What shape moves across the frames?",
    "What color is it?",
    "Where does it go?",
    "Which shape appears in the video?",
]
# vLLM on a CPU host: a small KV-cache reservation, a context that fits the clip, no graph compilation
VLLM_ARGS = [
    "gpu_memory_utilization=0.1",
    "max_model_len=2048",
    "enforce_eager=true",
    "distributed_executor_backend=uni",
]


async def run_load(
    url: str, clients: int, requests: int, video: dict, max_tokens: int, time_limit: float
) -> list[tuple[str, float, int]]:
    """(status, seconds, completion tokens) per request; status is the HTTP code or the transport error."""
    results: list[tuple[str, float, int]] = []
    issued = 0
    stop_at = time.monotonic() + time_limit

    async def client(k: int) -> None:
        nonlocal issued
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            while issued < requests and time.monotonic() < stop_at:
                issued += 1
                question = {"type": "text", "text": QUESTIONS[(issued + k) % len(QUESTIONS)]}
                payload = {"max_tokens": max_tokens, "messages": [{"role": "user", "content": [video, question]}]}
                t = time.perf_counter()
                try:
                    response = await http.post("/chat/completions", json=payload)
                except httpx.HTTPError as e:
                    results.append((type(e).__name__, time.perf_counter() - t, 0))
                    continue
                tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
                results.append((str(response.status_code), time.perf_counter() - t, tokens))
                if response.status_code == 429:  # a polite client waits as told before its next request
                    await asyncio.sleep(float(response.headers.get("Retry-After", 1)))

    await asyncio.gather(*(client(k) for k in range(clients)))
    return results


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def rss(proc: psutil.Process) -> int:
    """The server's memory with its children (vLLM's engine core runs in one)."""
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def measure(engine: str, model: Path, media: Path, video: dict, args, work: Path) -> dict:
    server_args = ["--media-root", media, "--log-level", "warning", "--engine", engine]
    for flag, value in (("--max-concurrency", args.max_concurrency), ("--max-queue", args.max_queue)):
        if value is not None:
            server_args += [flag, value]
    python = None
    if engine == "vllm":
        python = str(args.vllm_python)
        for arg in VLLM_ARGS:
            server_args += ["--vllm-arg", arg]
    log = work / f"server-{engine}.log"
    started_at = time.perf_counter()
    server = ServerProcess(model, *server_args, log=log, python=python).start(timeout=1200)
    try:
        start_s = time.perf_counter() - started_at
        proc = psutil.Process(server.pid)
        warm = asyncio.run(run_load(server.base_url, args.clients, args.warmup, video, args.max_tokens, 600))
        rss_warm = rss(proc)
        t0 = time.perf_counter()
        results = asyncio.run(
            run_load(server.base_url, args.clients, args.requests, video, args.max_tokens, args.time_limit)
        )
        wall = time.perf_counter() - t0
        rss_after = rss(proc)
        final = httpx.get(f"{server.url}/health", timeout=10)
        health = final.json() if final.status_code == 200 else {}
    finally:
        server.stop()
    server_log = log.read_text(errors="replace")
    counts = Counter(status for status, _, _ in results)
    ok = [s for status, s, _ in results if status == "200"]
    tokens = sum(n for _, _, n in results)
    checks = {
        "no 5xx or transport errors": all(s in ("200", "429") for s in counts),
        "every request answered": len(results) == args.requests,
        "/health answers": final.status_code == 200 and health.get("status") == "ok",
        "no traceback in the server log": "Traceback" not in server_log,
    }
    if engine == "longvid":  # vLLM's engine core grows its caches while it runs: not a leak
        checks["RSS within 10% of warm-up"] = abs(rss_after / rss_warm - 1) <= 0.10
    return {
        "server_start_s": round(start_s, 1),
        "wall_s": round(wall, 2),
        "requests": len(results),
        "requests_per_s": round(len(ok) / wall, 3),
        "p50_s": round(percentile(ok, 50), 3),
        "p95_s": round(percentile(ok, 95), 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "statuses": dict(counts),
        "warmup_statuses": dict(Counter(s for s, _, _ in warm)),
        "rss_warm_mib": round(rss_warm / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "checks": checks,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def readme_table(data: dict) -> str:
    """The README's table, from the results file (no hand-typed numbers)."""
    s, engines = data["settings"], data["engines"]
    lines = [
        f"{s['clients']} clients, {s['requests']} requests, {s['frames']} frames and {s['max_tokens']} generated "
        f"tokens each, tiny random model (head_dim 32), {data['machine']} (shared with other jobs; each engine "
        "measured at " + ", ".join(f"{k}: {v.get('measured', '?')}" for k, v in sorted(engines.items())) + "):",
        "",
        "| engine | requests/s | p50 s | p95 s | tokens/s | answered | server start s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in sorted(engines.items()):  # longvid, vllm
        lines.append(
            f"| `--engine {name}` | {r['requests_per_s']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} "
            f"| {r['tokens_per_s']:.1f} | {r['statuses'].get('200', 0)}/{s['requests']} | {r['server_start_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engines", default=None, help="Comma-separated: longvid,vllm (default: both if vLLM's venv exists)."
    )
    parser.add_argument("--vllm-python", type=Path, default=VLLM_PYTHON, help="Python of the vLLM environment.")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=16, help="Requests before the RSS baseline.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=16, help="Server setting (both engines).")
    parser.add_argument("--max-queue", type=int, default=None, help="Server setting (default: its own).")
    parser.add_argument("--time-limit", type=float, default=600.0, help="Seconds after which no request starts.")
    parser.add_argument("--model", type=Path, default=None, help="Checkpoint (default: a tiny random one).")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "serve_load.json", help="Results file.")
    parser.add_argument("--readme", action="store_true", help="Print the README table from --json and exit.")
    args = parser.parse_args()
    if args.readme:
        print(readme_table(json.loads(args.json.read_text())))
        return 0
    engines = args.engines.split(",") if args.engines else ["longvid"] + (["vllm"] if args.vllm_python.exists() else [])

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    config = tiny_videochat_flash_config(512, hidden=128, heads=4, kv_heads=2, intermediate=256)  # head_dim 32
    model = args.model or make_checkpoint(work / "tiny", config)
    media = work / "media"
    media.mkdir()
    write_video(media / "clip.mp4", moving_shapes(40, 48, 64), fps=10, gop=12)
    video = {"type": "video_url", "video_url": {"url": f"file://{media}/clip.mp4"}, "nframes": args.frames}

    console = Console()
    results = {}
    for engine in engines:
        console.print(f"[bold]{engine}[/bold]: starting the server and sending {args.requests} requests ...")
        results[engine] = measure(engine, model, media, video, args, work)

    table = Table(
        title=f"longvid serve: {args.clients} clients, {args.requests} requests, tiny model (head_dim 32), "
        f"{args.frames} frames, {args.max_tokens} tokens"
    )
    table.add_column("metric")
    for engine in engines:
        table.add_column(f"--engine {engine}", justify="right")
    rows = [
        ("requests / s (200s)", "requests_per_s", "{:.2f}"),
        ("latency p50 (s)", "p50_s", "{:.3f}"),
        ("latency p95 (s)", "p95_s", "{:.3f}"),
        ("generated tokens / s", "tokens_per_s", "{:.1f}"),
        ("wall time (s)", "wall_s", "{:.1f}"),
        ("server start (s)", "server_start_s", "{:.1f}"),
        ("RSS after warm-up (MiB)", "rss_warm_mib", "{:.0f}"),
        ("RSS after the run (MiB)", "rss_after_mib", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *(fmt.format(results[e][key]) for e in engines))
    table.add_row("statuses", *(json.dumps(results[e]["statuses"]) for e in engines))
    console.print(table)
    for engine in engines:
        for name, passed in results[engine]["checks"].items():
            console.print(f"{'PASS' if passed else 'FAIL'}  {engine}: {name}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.json.exists():  # a run of one engine keeps the other engine's last figures
        kept = json.loads(args.json.read_text()).get("engines", {})
        results = {**{k: v for k, v in kept.items() if k not in results}, **results}
    args.json.write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items() if k not in ("json", "vllm_python", "model")},
                "machine": f"{platform.machine()}, {psutil.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}",
                "vllm_args": VLLM_ARGS,
                "engines": results,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"wrote {args.json}")
    return 0 if all(all(r["checks"].values()) for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
