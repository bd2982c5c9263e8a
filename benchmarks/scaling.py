"""How time and memory grow from 256 to 10,000 frames of a 3-hour video (issue 14).

    python benchmarks/scaling.py            # the full run (3-hour video; slow on a small machine)
    python benchmarks/scaling.py --quick    # a 30-minute video, 128 / 512 / 1,000 frames

One run measures, each configuration in a fresh subprocess (so every peak RSS is its own):

* sampling: the frames of a uniform plan read by longvid's reader, by the FFmpeg command-line tool
  (`-threads 0`, decoding the whole file, a `select` filter keeping the same frames: the floor) and by a
  plain PyAV full decode; every returned frame's index is read back from its pixels (wrong frames);
* the pipeline: decode s, encode s, prefill s and peak RSS of (a) HiCo ToMe only, (b) ToMe + the in-LLM
  drop `uniform0_attention` [1, 0.75, 0.25], (c) Video-XL with beacon ratio 8;
* HiCo's speed-up: prefill and time to first token with ToMe's 16 tokens per frame vs the same model
  fed every patch token (no clip compression).

The video is generated once with PyAV (cached in --work): 448 x 448, 25 fps, H.264 (libx264, preset
and GOP in VIDEO below), low-motion content whose frames carry their index as a block code. Models are
tiny random checkpoints shaped like the parity fixtures (hidden 64, 4 layers; a 448-px UMT tower for
VideoChat-Flash, a 112-px CLIP tower for Video-XL), float32 on the CPU: the numbers are about how the
pipeline scales, not about a real model's speed. Results: benchmarks/results/scaling.{json,png,md}
(`--quick`: scaling_quick.*, so `make bench` leaves the full run's files alone);
`--readme` rewrites the README's Performance section from the JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
QUESTION = "What happens in the video?"
VIDEO = dict(size=448, fps=25, gop=250, bframes=2, preset="veryfast", crf=30)
CONFIGS = {
    "hico": "(a) HiCo ToMe",
    "hico_drop": "(b) ToMe + uniform0_attention [1, 0.75, 0.25]",
    "video_xl": "(c) Video-XL beacon x8",
}
DROP = {
    "mm_llm_compress": True,
    "llm_compress_type": "uniform0_attention",
    "llm_compress_layer_list": [1, 2],
    "llm_image_token_ratio_list": [1.0, 0.75, 0.25],
}
LONG_CONTEXT = 1 << 20  # positions: 10,000 frames of every patch token must fit the tiny models' configs
FULL = dict(
    minutes=180, frames=[256, 1000, 2000, 5000, 10_000], sampling=[256, 512, 1000, 2000, 5000, 10_000], hico=[256, 1000]
)
QUICK = dict(minutes=30, frames=[128, 512, 1000], sampling=[256, 512, 1000, 2000], hico=[16, 64])


# ---------------------------------------------------------------------------------------------- inputs
def index_cells(y: np.ndarray, i: int, on: int = 235) -> None:
    """Paint `i` as the block code `longvid.data.synthetic.read_index` reads (20 cells, 4 x 5) into luma `y`."""
    h, w = y.shape
    ch, cw = h // 4, w // 5
    for bit in range(20):
        r, c = divmod(bit, 5)
        y[r * ch + 2 : (r + 1) * ch - 2, c * cw + 2 : (c + 1) * cw - 2] = on if (i >> bit) & 1 else 40


def make_video(work: Path, minutes: int) -> Path:
    """A `minutes`-long 448-px H.264 video (cached): a still gradient, a slowly drifting dim square and the
    frame index code; frames are written as YUV so no colour conversion is spent on them."""
    import av

    size, fps = VIDEO["size"], VIDEO["fps"]
    path = work / f"video_{minutes}min_{size}px.mp4"
    if path.exists():
        return path
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    start = time.perf_counter()
    yuv = np.full((size * 3 // 2, size), 128, np.uint8)  # yuv420p: the Y plane, then U and V (neutral)
    y = yuv[:size]
    base = np.tile(np.linspace(20, 90, size).astype(np.uint8), (size, 1))
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "preset": VIDEO["preset"],
            "crf": str(VIDEO["crf"]),
            "g": str(VIDEO["gop"]),
            "bf": str(VIDEO["bframes"]),
            "sc_threshold": "0",
        }
        for i in range(minutes * 60 * fps):
            y[:] = base
            x = (i // 5) % (size - 40)  # a square drifting 1 px every 5 frames
            y[size - 40 :, x : x + 40] = 100
            index_cells(y, i)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")))
        out.mux(stream.encode())
    tmp.rename(path)
    print(
        f"wrote {path.name} ({path.stat().st_size / 2**20:.0f} MiB, {minutes * 60 * fps:,} frames) in "
        f"{time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return path


def make_models(work: Path) -> dict[str, Path]:
    """Tiny random checkpoints shaped like the parity fixtures (cached)."""
    from longvid.tiny import make_checkpoint, make_tiny_video_xl, tiny_videochat_flash_config

    vcf, vxl = work / "videochat_flash_tiny_448", work / "video_xl_tiny_r8"
    if not (vcf / "config.json").exists():
        cfg = tiny_videochat_flash_config(
            1000,
            hidden=64,
            layers=4,
            heads=4,
            kv_heads=2,
            intermediate=128,
            image_size=448,
            patch=16,
            vision_dim=64,
            vision_depth=3,
            vision_heads=4,
            max_position_embeddings=LONG_CONTEXT,
            tokenizer_model_max_length=LONG_CONTEXT,
        )
        make_checkpoint(vcf, cfg, seed=0)
    if not (vxl / "config.json").exists():
        make_tiny_video_xl(
            vxl,
            seed=0,
            vocab_size=1000,
            hidden=64,
            layers=4,
            heads=4,
            kv_heads=2,
            intermediate=128,
            image_size=112,
            patch=14,
            vision_dim=48,
            vision_layers=3,
            window=80,
            ratios=[8],
            max_position_embeddings=LONG_CONTEXT,
            tokenizer_model_max_length=LONG_CONTEXT,
        )
    return {"hico": vcf, "hico_drop": vcf, "video_xl": vxl}


def plan_indices(video: Path, frames: int) -> list[int]:
    """The uniform plan (segment middles) that configurations (a) and (b) sample."""
    from longvid.video import open_video, uniform_plan

    with open_video(video) as v:
        return uniform_plan(v.num_frames, v.fps, frames).indices


# ---------------------------------------------------------------------------------------------- workers
def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(children: bool = False) -> float:
    """CPU time (user + system) of this process's threads, or of its waited-for children. On a CPU shared
    with other jobs, wall time measures the share this process got; CPU time measures the work it did."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm_up(m) -> None:
    """One small prefill first, so one-off kernel set-up is not counted as prefill time."""
    import torch

    from longvid.video import SamplingPlan

    plan = SamplingPlan(list(range(8)), 1.0, 8.0, 8)
    ids = m.prompt_ids(m.conversation(QUESTION, plan))
    visual = torch.zeros(m.visual_token_count(plan), m.config.llm.hidden_size, dtype=m.dtype)
    with torch.no_grad():
        m.prefill(ids, visual, m.new_cache())


def work_sample(video: str, frames: int) -> dict:
    """longvid's reader alone: the uniform plan's frames as RGB arrays, each checked."""
    from longvid.data.synthetic import read_index
    from longvid.video import open_video, uniform_plan

    start, cpu = time.perf_counter(), cpu_seconds()
    with open_video(video) as v:
        idx = uniform_plan(v.num_frames, v.fps, frames).indices
        wrong = sum(read_index(f) != i for i, f in zip(idx, v.frames(idx)))
    return {
        "seconds": time.perf_counter() - start,
        "cpu_s": cpu_seconds() - cpu,
        "wrong": wrong,
        "peak_rss_mib": peak_rss_mib(),
    }


def timed_attention() -> list[float]:
    """Wrap the decoder's attention function with clocks: which part of prefill grows with the context.
    [wall s, CPU s of the calling thread]: with one torch thread, the second is the work attention did."""
    from longvid.llm import qwen2

    spent = [0.0, 0.0]
    inner = qwen2.attention

    def attention(*args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        out = inner(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        spent[1] += time.thread_time() - cpu
        return out

    qwen2.attention = attention
    return spent


def work_pipeline(video: str, ckpt: str, config: str, frames: int) -> dict:
    """Open -> plan -> decode + encode -> prefill -> first token, through the public API."""
    import torch

    import longvid

    start = time.perf_counter()
    m = longvid.load(ckpt, overrides=DROP if config == "hico_drop" else None)
    warm_up(m)
    load_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), cpu_seconds()
    src = m.open(video)
    plan = m.sampling_plan(src, num_frames=frames)
    visual = m.encode_video(src, plan)
    attention_s = timed_attention()  # after encoding: only the LLM's attention (the towers have their own)
    cpu_encoded = cpu_seconds()
    answer = m.answer(visual, QUESTION, max_new_tokens=1)
    ttft = time.perf_counter() - start
    cpu_answered = cpu_seconds()
    t = answer.timings
    return {
        "config": config,
        "frames": len(plan),
        "visual_tokens": answer.num_visual_tokens,
        "decode_s": t.get("decode", 0.0),
        "encode_s": t.get("encode", 0.0),
        "prefill_s": t.get("prefill", 0.0),
        "prefill_attention_s": attention_s[0],  # of which the decoder's attention
        "prefill_attention_cpu_s": attention_s[1],
        "decode_encode_cpu_s": cpu_encoded - cpu,
        "prefill_cpu_s": cpu_answered - cpu_encoded,  # the answer step: prefill and the first token
        "ttft_s": ttft,
        "load_s": load_s,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


def work_hico(video: str, ckpt: str, frames: int, compress: bool) -> dict:
    """Prefill and time to first token with ToMe (16 tokens / frame) or with every patch token."""
    import torch

    import longvid
    from longvid.timing import batched

    m = longvid.load(ckpt)
    warm_up(m)
    start = time.perf_counter()
    src = m.open(video)
    plan = m.sampling_plan(src, num_frames=frames)
    with torch.no_grad():
        if compress:
            visual = m.encode_video(src, plan).tokens
        else:  # the same tower and MLP, without the clip-level merge
            t = m.config.frames_per_clip
            parts = []
            for batch in batched(src.frames(plan.indices), 4 * t):
                pixels = m.pixels(batch)
                feats = m.model.vision_tower(pixels.reshape(-1, t, *pixels.shape[1:]))
                parts.append(m.model.projector.mlp(feats).flatten(0, 1))
            visual = torch.cat(parts)
        encoded, cpu = time.perf_counter(), cpu_seconds()
        ids = m.prompt_ids(m.conversation(QUESTION, plan))
        cache = m.new_cache()
        logits = m.prefill(ids, visual, cache)
        int(logits.argmax())  # the first token
    end, cpu = time.perf_counter(), cpu_seconds() - cpu
    return {
        "frames": len(plan),
        "compress": compress,
        "visual_tokens": int(visual.shape[0]),
        "prefill_s": end - encoded,
        "prefill_cpu_s": cpu,
        "ttft_s": end - start,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


TORCH_THREADS: int | None = None  # --torch-threads, passed to the workers


def run_worker(*args: str, timeout: float = 7200) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if TORCH_THREADS:
        env["LONGVID_BENCH_TORCH_THREADS"] = str(TORCH_THREADS)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- floors
def ensure_ffmpeg() -> str | None:
    """The FFmpeg command-line tool, installed with apt-get (Debian's `ffmpeg`) when missing and possible."""
    if shutil.which("ffmpeg") is None and shutil.which("apt-get"):
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        print("installing ffmpeg with apt-get ...", file=sys.stderr, flush=True)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "ffmpeg"], capture_output=True
        )
    return shutil.which("ffmpeg")


def select_expr(indices: list[int]) -> str:
    """An FFmpeg `select` expression true exactly at `indices` (a binary search tree: O(log n) per frame)."""
    idx = sorted(set(indices))

    def tree(lo: int, hi: int) -> str:
        if hi - lo == 1:
            return f"eq(n,{idx[lo]})"
        mid = (lo + hi) // 2
        return f"if(lt(n,{idx[mid]}),{tree(lo, mid)},{tree(mid, hi)})"

    return tree(0, len(idx))


def ffmpeg_floor(ffmpeg: str, video: Path, indices: list[int], work: Path) -> dict:
    """The FFmpeg CLI decoding the whole file on every core and converting the plan's frames to RGB."""
    from longvid.data.synthetic import read_index

    size = VIDEO["size"]
    script = work / f"select_{len(indices)}.txt"
    script.write_text(f"select='{select_expr(indices)}'")
    cmd = [
        ffmpeg,
        "-v",
        "error",
        "-nostdin",
        "-threads",
        "0",
        "-i",
        str(video),
        "-filter_script:v",
        str(script),
        "-vsync",
        "0",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    start, cpu, own_cpu = time.perf_counter(), cpu_seconds(children=True), cpu_seconds()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = []
    frame_bytes = size * size * 3
    while chunk := proc.stdout.read(frame_bytes):
        if len(chunk) == frame_bytes:
            got.append(read_index(np.frombuffer(chunk, np.uint8).reshape(size, size, 3)))
    err = proc.stderr.read().decode(errors="replace")
    proc.wait()
    seconds = time.perf_counter() - start
    # ffmpeg's CPU time (it is the only child waited for meanwhile); reading the index back is ours, not its
    cpu = cpu_seconds(children=True) - cpu
    own_cpu = cpu_seconds() - own_cpu
    want = sorted(set(indices))
    if proc.returncode:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    wrong = sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))
    return {"seconds": seconds, "cpu_s": cpu, "reader_cpu_s": own_cpu, "wrong": wrong}


def pyav_full(video: Path, indices: list[int]) -> dict:
    """A plain PyAV loop over every frame (default settings), converting only the plan's frames."""
    import av

    from longvid.data.synthetic import read_index

    want = set(indices)
    got = {}
    start, cpu = time.perf_counter(), cpu_seconds()
    with av.open(str(video)) as c:
        for n, frame in enumerate(c.decode(video=0)):
            if n in want:
                got[n] = read_index(frame.to_ndarray(format="rgb24"))
    wrong = sum(got.get(i) != i for i in want)
    return {"seconds": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu, "wrong": wrong}


# ---------------------------------------------------------------------------------------------- report
def targets(res: dict) -> list[dict]:
    """The issue's targets, checked on this run's numbers. Sampling compares wall time (it is about using
    every core); prefill compares CPU seconds where measured: torch runs on one thread, so CPU time is the
    work done, while wall time also counts the waits for a CPU that other jobs hold."""
    out = []
    for row in res["sampling"]:
        if row["frames"] in (512, 2000) and row.get("ffmpeg_s"):
            ratio = row["longvid_s"] / row["ffmpeg_s"]
            cpu = ""
            if row.get("longvid_cpu_s") and row.get("ffmpeg_cpu_s"):
                cpu = f" (CPU time {row['longvid_cpu_s'] / row['ffmpeg_cpu_s']:.2f}x)"
            out.append(
                {
                    "target": f"sampling {row['frames']:,} frames within 1.5x of the FFmpeg floor (wall time)",
                    "value": f"{ratio:.2f}x{cpu}",
                    "ok": ratio <= 1.5,
                }
            )
    pipe = [r for r in res["pipeline"] if "error" not in r]
    for cfg in CONFIGS:
        rows = sorted((r for r in pipe if r["config"] == cfg), key=lambda r: r["frames"])
        if len(rows) < 2:
            continue
        hi = rows[-1]
        lo = next((r for r in rows if r["frames"] >= 1000 and r is not hi), rows[0])  # 1,000 frames if run
        if hi is lo:
            continue
        ratio = hi["peak_rss_mib"] / lo["peak_rss_mib"]
        out.append(
            {
                "target": f"{CONFIGS[cfg]}: peak RSS at {hi['frames']:,} frames <= 1.2x that at {lo['frames']:,}",
                "value": f"{lo['peak_rss_mib']:.0f} -> {hi['peak_rss_mib']:.0f} MiB ({ratio:.2f}x)",
                "ok": ratio <= 1.2,
            }
        )
        key = "prefill_cpu_s" if all(r.get("prefill_cpu_s") for r in (lo, hi)) else "prefill_s"
        per = [r[key] / r["visual_tokens"] * 1000 for r in (lo, hi)]
        ratio = per[1] / per[0]
        out.append(
            {
                "target": f"{CONFIGS[cfg]}: prefill {'CPU ' if key == 'prefill_cpu_s' else ''}s per 1k visual "
                f"tokens flat (<= 1.5x) from {lo['frames']:,} to {hi['frames']:,} frames",
                "value": f"{per[0]:.3f} -> {per[1]:.3f} s ({ratio:.2f}x)",
                "ok": ratio <= 1.5,
            }
        )
    for row in res["hico"]:
        if "speedup" in row:
            speedup = row.get("cpu_speedup") or row["speedup"]
            out.append(
                {
                    "target": f"HiCo >= 5x faster prefill than no clip compression ({row['frames']:,} frames"
                    f"{', CPU time' if row.get('cpu_speedup') else ''})",
                    "value": f"{speedup:.1f}x (wall time {row['speedup']:.1f}x)",
                    "ok": speedup >= 5,
                }
            )
    return out


def fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def omitted(res: dict) -> str:
    """The parts of the full grid this (non-quick) run has no rows for, in words ('' when none)."""
    setup = res["setup"]
    if setup["quick"]:
        return ""
    parts = []
    done = {r["frames"] for r in res["sampling"] if "error" not in r}
    left = [n for n in FULL["sampling"] if n not in done]
    if left:
        parts.append(f"sampling at {' / '.join(f'{n:,}' for n in left)} frames")
    for cfg, label in CONFIGS.items():
        done = {r["frames"] for r in res["pipeline"] if r["config"] == cfg and "error" not in r}
        left = [n for n in FULL["frames"] if n not in done]
        if left:
            parts.append(f"{label} at {' / '.join(f'{n:,}' for n in left)} frames")
    done = {r["frames"] for r in res["hico"] if "speedup" in r}
    left = [n for n in FULL["hico"] if n not in done]
    if left:
        parts.append(f"HiCo vs every patch token at {' / '.join(f'{n:,}' for n in left)} frames")
    return "; ".join(parts)


def with_cpu(wall, cpu, spec: str = ".1f") -> str:
    """'wall (CPU)' seconds, or the wall time alone where CPU time was not recorded."""
    return fmt(wall, spec) if cpu is None else f"{fmt(wall, spec)} ({fmt(cpu, spec)})"


def markdown(res: dict) -> str:
    """The tables as markdown (README's Performance section is this text)."""
    s = res["setup"]
    shared = ", shared with other jobs" if s.get("shared") else ""
    lines = [
        f"Measured by `python benchmarks/scaling.py{' --quick' if s['quick'] else ''}` on {s['machine']} "
        f"({s['cores']} cores{shared}; torch threads: {s.get('torch_threads', 'default')}), {s['date']}, "
        f"{s['wall_s'] / 60:.0f} min. Video: {s['video']}. Models: {s['models']}."
    ]
    if s["quick"]:
        lines.append(
            "\nThis is the `--quick` run (a 30-minute video, up to 1,000 frames; targets compare the smallest "
            "and the largest frame count). The full run (a 3-hour video, up to 10,000 frames, and every "
            "patch token of 256 and 1,000 frames, i.e. 200k and 784k tokens, without clip compression) "
            "takes hours on this machine."
        )
    if s.get("note"):
        lines.append(f"\nConditions: {s['note']}")
    missing = omitted(res)
    if missing:
        lines.append(f"\nNot measured in this run (left out of the full grid): {missing}.")
    lines += [
        "",
        "Seconds are wall time, with the CPU time (user + system, every thread) in brackets where recorded.",
        "",
        "Sampling: the same frames read by longvid's reader, by the FFmpeg command line (the whole file "
        "decoded on every core, a `select` filter keeping the frames) and by a plain PyAV loop; every "
        "frame's index is read back from its pixels.",
        "",
        "| frames | longvid s | wrong | FFmpeg CLI `-threads 0` s | wrong | longvid / FFmpeg "
        "| PyAV full decode s | wrong |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["sampling"]:
        ratio = r["longvid_s"] / r["ffmpeg_s"] if r.get("ffmpeg_s") else None
        lines.append(
            f"| {r['frames']:,} | {with_cpu(r['longvid_s'], r.get('longvid_cpu_s'))} | {r['longvid_wrong']} "
            f"| {with_cpu(r.get('ffmpeg_s'), r.get('ffmpeg_cpu_s'))} | {fmt(r.get('ffmpeg_wrong'), 'd')} "
            f"| {fmt(ratio)}x | {with_cpu(r.get('pyav_s'), r.get('pyav_cpu_s'))} | {fmt(r.get('pyav_wrong'), 'd')} |"
        )
    lines += [
        "",
        "The pipeline, each configuration in a fresh process (decode s includes resizing and normalising the frames; "
        "the CPU time in brackets after encode s is decode + encode together; prefill CPU s is the answer step):",
        "",
        "| frames | configuration | visual tokens | decode s | encode s | prefill s | of which attention s "
        "| prefill s / 1k tokens | peak RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["pipeline"]:
        if "error" in r:
            lines.append(f"| {r['frames']:,} | {CONFIGS[r['config']]} | failed: {r['error']} | | | | | | |")
            continue
        cpu = r.get("prefill_cpu_s")
        per_1k = with_cpu(r["prefill_s"] / r["visual_tokens"] * 1000, cpu and cpu / r["visual_tokens"] * 1000, ".3f")
        lines.append(
            f"| {r['frames']:,} | {CONFIGS[r['config']]} | {r['visual_tokens']:,} | {r['decode_s']:.1f} "
            f"| {with_cpu(r['encode_s'], r.get('decode_encode_cpu_s'))} | {with_cpu(r['prefill_s'], cpu, '.2f')} "
            f"| {with_cpu(r.get('prefill_attention_s'), r.get('prefill_attention_cpu_s'), '.2f')} | {per_1k} "
            f"| {r['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        "HiCo: the same model fed ToMe's 16 tokens per frame or every patch token (784 per frame):",
        "",
        "| frames | visual tokens, ToMe / all patches | prefill s, ToMe / all patches | speed-up "
        "| time to first token s, ToMe / all patches |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in res["hico"]:
        if "speedup" in r:
            prefill = f"{r['tome_prefill_s']:.2f} / {r['all_prefill_s']:.2f}"
            speedup = f"{r['speedup']:.1f}x"
            if r.get("cpu_speedup"):
                prefill += f" (CPU {r['tome_prefill_cpu_s']:.2f} / {r['all_prefill_cpu_s']:.2f})"
                speedup += f" (CPU {r['cpu_speedup']:.1f}x)"
            lines.append(
                f"| {r['frames']:,} | {r['tome_tokens']:,} / {r['all_tokens']:,} | {prefill} | {speedup} "
                f"| {r['tome_ttft_s']:.1f} / {r['all_ttft_s']:.1f} |"
            )
    lines += ["", "| target (issue 14) | this run | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['ok'] else 'no'} |" for t in res["targets"]]
    return "\n".join(lines) + "\n"


def gpu_markdown() -> str:
    """`benchmarks/gpu_scaling.py`'s results, or a line saying they do not exist yet."""
    path = RESULTS / "gpu_scaling.json"
    if not path.exists():
        return (
            "GPU: `python benchmarks/gpu_scaling.py` (a random-weight 7B-shaped VideoChat-Flash in bf16 at "
            "1,000 / 5,000 / 10,000 frames: time to first token, peak GPU memory, tokens/s) has not been run "
            "yet: no GPU was available. Its code path is checked on the CPU with `--tiny --device cpu`.\n"
        )
    g = json.loads(path.read_text())
    lines = [
        f"GPU: `python benchmarks/gpu_scaling.py`, {g['model']}, {g['dtype']}, on {g['device']}, {g['date']}:",
        "",
        "| frames | visual tokens | time to first token s | prefill s | peak GPU GiB | tokens/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in g["rows"]:
        if "error" in r:
            lines.append(f"| {r['frames']:,} | {r['error']} | | | | |")
        else:
            lines.append(
                f"| {r['frames']:,} | {r['visual_tokens']:,} | {r['ttft_s']:.1f} | {r['prefill_s']:.1f} "
                f"| {r['peak_gpu_gib']:.1f} | {r['tokens_per_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    pipe = [r for r in res["pipeline"] if "error" not in r]
    for cfg, label in CONFIGS.items():
        rows = sorted((r for r in pipe if r["config"] == cfg), key=lambda r: r["frames"])
        if not rows:
            continue
        x = [r["frames"] for r in rows]
        total = ax_t.plot(x, [r["decode_s"] + r["encode_s"] + r["prefill_s"] for r in rows], "o-", label=label)
        ax_t.plot(x, [r["prefill_s"] for r in rows], "o--", color=total[0].get_color(), alpha=0.6)
        ax_m.plot(x, [r["peak_rss_mib"] for r in rows], "o-", label=label)
    samp = [r for r in res["sampling"] if r.get("ffmpeg_s")]
    if samp:
        x = [r["frames"] for r in samp]
        ax_t.plot(x, [r["ffmpeg_s"] for r in samp], "k:", label="FFmpeg CLI, whole file (the floor)")
        ax_t.plot(x, [r["longvid_s"] for r in samp], "k-.", label="longvid reader alone")
    ax_t.set(
        xscale="log",
        yscale="log",
        xlabel="frames sampled",
        ylabel="wall seconds (CPU time: in the tables)",
        title="decode + encode + prefill (solid), prefill (dashed)",
    )
    ax_m.set(xscale="log", xlabel="frames sampled", ylabel="peak RSS (MiB)", title="peak memory")
    ax_m.set_ylim(bottom=0)
    ticks = sorted({r["frames"] for r in pipe} | {r["frames"] for r in samp})
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks], fontsize=7)
        ax.minorticks_off()
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def update_readme(md: str) -> None:
    """Replace the README's Performance section body (up to the next `## ` heading) with `md`."""
    readme = REPO / "README.md"
    text = readme.read_text()
    body = (
        "Generated from `benchmarks/results/scaling.json` by `python benchmarks/scaling.py --readme`.\n\n"
        + md
        + "\n![scaling](benchmarks/results/scaling.png)\n\n"
        + gpu_markdown()
    )
    section = "## Performance\n\n" + body + "\n"
    match = re.search(r"^## Performance\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:  # a new section, before the Layout section
        match = re.search(r"^(?=## Layout\n)", text, flags=re.M) or re.search(r"\Z", text)
    text = text[: match.start()] + section + text[match.end() :]
    readme.write_text(text)


# ---------------------------------------------------------------------------------------------- main
def results_path(quick: bool, ext: str) -> Path:
    return RESULTS / f"scaling{'_quick' if quick else ''}.{ext}"


def row_key(row: dict) -> tuple:
    return row["frames"], CONFIGS_ORDER.get(row.get("config"), -1)


CONFIGS_ORDER = {c: i for i, c in enumerate(CONFIGS)}


def add_row(res: dict, section: str, row: dict) -> None:
    """Add (or replace) a row, keeping each section sorted."""
    res[section] = sorted([r for r in res[section] if row_key(r) != row_key(row)] + [row], key=row_key)


def save(res: dict, began: float, done: bool, merge: bool = False) -> None:
    """Write the JSON after every row, so an interrupted run keeps what it measured (`--resume` continues it).
    With `merge` (resumed runs), rows another invocation wrote meanwhile are kept: several resumed
    invocations may fill in parts of one grid side by side (their CPU times stay comparable)."""
    path = results_path(res["setup"]["quick"], "json")
    with open(Path(tempfile.gettempdir()) / "longvid_scaling.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wall = res["setup"].get("wall_before_s", 0.0) + time.perf_counter() - began
        if merge and path.exists():
            disk = json.loads(path.read_text())
            if disk["setup"]["quick"] == res["setup"]["quick"]:
                for section in ("sampling", "pipeline", "hico"):
                    ours = {row_key(r) for r in res[section]}
                    for row in disk[section]:
                        if row_key(row) not in ours and "error" not in row:
                            add_row(res, section, row)
                wall = max(wall, disk["setup"].get("wall_s", 0.0))
        res["targets"] = targets(res)
        res["setup"]["wall_s"] = wall
        res["setup"]["complete"] = done and not omitted(res)
        path.write_text(json.dumps(res, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30-minute video, 128 / 512 / 1,000 frames")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench_scaling", help="cached video and models")
    parser.add_argument("--frames", type=int, nargs="*", help="override the pipeline's frame counts")
    parser.add_argument("--sampling", type=int, nargs="*", help="override the sampling rows' frame counts")
    parser.add_argument("--hico", type=int, nargs="*", help="override the HiCo rows' frame counts")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="only these pipeline configurations")
    parser.add_argument("--note", help="a sentence on the conditions (e.g. other jobs on the CPU), kept in the JSON")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows of the results file and measure only the missing ones"
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="only re-render scaling.md / .png and README's Performance section from the JSON",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch threads in the workers (default: torch's, all cores)."
        " On a machine shared with other jobs, 1 avoids threads waiting for each other on every op",
    )
    args = parser.parse_args()
    if args.worker:
        if os.environ.get("LONGVID_BENCH_TORCH_THREADS"):
            import torch

            torch.set_num_threads(int(os.environ["LONGVID_BENCH_TORCH_THREADS"]))
        kind, *rest = args.worker
        if kind == "sample":
            out = work_sample(rest[0], int(rest[1]))
        elif kind == "pipeline":
            out = work_pipeline(rest[0], rest[1], rest[2], int(rest[3]))
        else:
            out = work_hico(rest[0], rest[1], int(rest[2]), rest[3] == "1")
        print(json.dumps(out))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.readme:  # re-render the table and plot from the JSON, then the README section
        res = json.loads((RESULTS / "scaling.json").read_text())
        (RESULTS / "scaling.md").write_text(markdown(res))
        plot(res, RESULTS / "scaling.png")
        update_readme(markdown(res))
        return

    global TORCH_THREADS
    TORCH_THREADS = args.torch_threads
    setup = QUICK if args.quick else FULL
    grid = {
        "frames": setup["frames"] if args.frames is None else args.frames,
        "sampling": setup["sampling"] if args.sampling is None else args.sampling,
        "hico": setup["hico"] if args.hico is None else args.hico,
        "configs": args.configs or list(CONFIGS),
    }
    began = time.perf_counter()
    video = make_video(args.work, setup["minutes"])
    models = make_models(args.work)
    ffmpeg = ensure_ffmpeg()
    import av

    res: dict = {
        "setup": {
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.machine() + " CPU",
            "cores": len(os.sched_getaffinity(0)),
            "shared": args.quick or bool(args.note),
            "note": args.note,
            "torch_threads": args.torch_threads or "default",
            "decode_threads": "all cores",
            "video": (
                f"{setup['minutes']} min, {VIDEO['size']}x{VIDEO['size']}, {VIDEO['fps']} fps, H.264 libx264 "
                f"preset {VIDEO['preset']}, crf {VIDEO['crf']}, GOP {VIDEO['gop']}, {VIDEO['bframes']} B-frames, "
                "low motion"
            ),
            "models": (
                "tiny random float32 checkpoints shaped like the parity fixtures: VideoChat-Flash hidden 64 / 4 "
                "layers with a 448-px UMT tower (patch 16, 784 patches per frame), Video-XL hidden 64 / 4 "
                "layers with a 112-px CLIP tower; in-LLM drop at layers [1, 2]"
            ),
            "pyav": av.__version__,
            "ffmpeg": (
                subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
                if ffmpeg
                else None
            ),
            "grid": grid,
            "full_grid": {k: FULL[k] for k in ("frames", "sampling", "hico")} | {"configs": list(CONFIGS)},
        },
        "sampling": [],
        "pipeline": [],
        "hico": [],
    }
    if args.resume and results_path(args.quick, "json").exists():
        old = json.loads(results_path(args.quick, "json").read_text())
        if old["setup"]["quick"] == args.quick:
            res["setup"]["wall_before_s"] = old["setup"].get("wall_s", 0.0)
            res["setup"]["date"] = old["setup"]["date"]
            res["setup"]["note"] = args.note or old["setup"].get("note")
            res["setup"]["shared"] = res["setup"]["shared"] or old["setup"].get("shared", False)
            for key in ("sampling", "pipeline", "hico"):
                res[key] = [r for r in old[key] if "error" not in r]
    done_sampling = {r["frames"] for r in res["sampling"]}
    done_pipeline = {(r["frames"], r["config"]) for r in res["pipeline"]}
    done_hico = {r["frames"] for r in res["hico"]}

    print(
        f"{'frames':>7} {'longvid s':>9} {'wrong':>5} {'ffmpeg s':>8} {'wrong':>5} {'ratio':>6} {'PyAV full s':>11}"
        f" {'wrong':>5}",
        flush=True,
    )
    for n in grid["sampling"]:
        if n in done_sampling:
            continue
        row = {"frames": n}
        r = run_worker("sample", str(video), str(n))
        row.update(
            longvid_s=r.get("seconds"),
            longvid_cpu_s=r.get("cpu_s"),
            longvid_wrong=r.get("wrong"),
            longvid_peak_rss_mib=r.get("peak_rss_mib"),
        )
        idx = plan_indices(video, n)
        if ffmpeg:
            f = ffmpeg_floor(ffmpeg, video, idx, args.work)
            row.update(
                ffmpeg_s=f.get("seconds"),
                ffmpeg_cpu_s=f.get("cpu_s"),
                ffmpeg_wrong=f.get("wrong"),
                ffmpeg_error=f.get("error"),
            )
        p = pyav_full(video, idx)
        row.update(pyav_s=p["seconds"], pyav_cpu_s=p["cpu_s"], pyav_wrong=p["wrong"])
        add_row(res, "sampling", row)
        save(res, began, False, args.resume)
        ratio = row["longvid_s"] / row["ffmpeg_s"] if row.get("ffmpeg_s") else None
        print(
            f"{n:>7,} {row['longvid_s']:>9.1f} {row['longvid_wrong']:>5} {fmt(row.get('ffmpeg_s'), '.1f'):>8} "
            f"{fmt(row.get('ffmpeg_wrong'), 'd'):>5} {fmt(ratio):>6} {row['pyav_s']:>11.1f} {row['pyav_wrong']:>5}",
            flush=True,
        )

    print(
        f"\n{'frames':>7} {'configuration':<46} {'tokens':>8} {'decode s':>8} {'encode s':>8} {'prefill s':>9} "
        f"{'s/1k tok':>8} {'RSS MiB':>8}",
        flush=True,
    )
    for n in grid["frames"]:
        for cfg in grid["configs"]:
            if (n, cfg) in done_pipeline:
                continue
            r = run_worker("pipeline", str(video), str(models[cfg]), cfg, str(n))
            r.setdefault("config", cfg)
            r.setdefault("frames", n)
            add_row(res, "pipeline", r)
            save(res, began, False, args.resume)
            if "error" in r:
                print(f"{n:>7,} {CONFIGS[cfg]:<46} failed: {r['error']}", flush=True)
                continue
            print(
                f"{n:>7,} {CONFIGS[cfg]:<46} {r['visual_tokens']:>8,} {r['decode_s']:>8.1f} {r['encode_s']:>8.1f} "
                f"{r['prefill_s']:>9.2f} {r['prefill_s'] / r['visual_tokens'] * 1000:>8.3f} "
                f"{r['peak_rss_mib']:>8.0f}  (attention {r['prefill_attention_s']:.2f} s)",
                flush=True,
            )

    print(
        f"\n{'frames':>7} {'tokens ToMe / all':>20} {'prefill s ToMe / all':>22} {'speed-up':>8} {'TTFT s':>14}",
        flush=True,
    )
    for n in grid["hico"]:
        if n in done_hico:
            continue
        a = run_worker("hico", str(video), str(models["hico"]), str(n), "1")
        b = run_worker("hico", str(video), str(models["hico"]), str(n), "0", timeout=6 * 3600)  # quadratic
        if "error" in a or "error" in b:
            add_row(res, "hico", {"frames": n, "error": a.get("error") or b.get("error")})
            print(f"{n:>7,} failed: {a.get('error') or b.get('error')}", flush=True)
            continue
        row = {
            "frames": n,
            "tome_tokens": a["visual_tokens"],
            "all_tokens": b["visual_tokens"],
            "tome_prefill_s": a["prefill_s"],
            "all_prefill_s": b["prefill_s"],
            "speedup": b["prefill_s"] / a["prefill_s"],
            "tome_prefill_cpu_s": a["prefill_cpu_s"],
            "all_prefill_cpu_s": b["prefill_cpu_s"],
            "cpu_speedup": b["prefill_cpu_s"] / a["prefill_cpu_s"],
            "tome_ttft_s": a["ttft_s"],
            "all_ttft_s": b["ttft_s"],
            "ttft_speedup": b["ttft_s"] / a["ttft_s"],
            "tome_peak_rss_mib": a["peak_rss_mib"],
            "all_peak_rss_mib": b["peak_rss_mib"],
            "torch_threads": b["torch_threads"],
        }
        add_row(res, "hico", row)
        save(res, began, False, args.resume)
        print(
            f"{n:>7,} {a['visual_tokens']:>9,} / {b['visual_tokens']:<9,} {a['prefill_s']:>10.2f} / "
            f"{b['prefill_s']:<9.2f} {row['speedup']:>7.1f}x {a['ttft_s']:>6.1f} / {b['ttft_s']:<6.1f}",
            flush=True,
        )

    save(res, began, True, args.resume)
    print()
    for t in res["targets"]:
        print(f"{'MET ' if t['ok'] else 'MISS'}  {t['target']}: {t['value']}")
    md = markdown(res)
    results_path(args.quick, "md").write_text(md)
    plot(res, results_path(args.quick, "png"))
    print(f"\nwrote {results_path(args.quick, '{json,md,png}')} ({res['setup']['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
