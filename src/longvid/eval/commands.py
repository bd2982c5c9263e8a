"""`longvid eval BENCH --data DIR`: answer a benchmark's questions and score them (or score given outputs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, InputError
from ..flags import CacheDirOpt, DtypeOpt, ModelOpt, SetOpt
from ..launch import torchrun


def eval_command(
    bench: str = typer.Argument(
        ..., help="mvbench, videomme, videomme-sub, mlvu, longvideobench, lvbench, charades-sta."
    ),
    data: Path = typer.Option(..., "--data", help="The benchmark's folder in its official layout."),
    model: Optional[str] = ModelOpt,
    max_frames: Optional[int] = typer.Option(
        None,
        "--max-frames",
        help="Frames per video (default: the paper's setting for the model family: VideoChat-Flash 512, Video-XL 128).",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for predictions.jsonl, summary.json, accuracy.png (default: eval-results/BENCH)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first K questions."),
    nproc: int = typer.Option(1, "--nproc", help="Processes to shard the questions over (torch.distributed.run)."),
    score_only: Optional[Path] = typer.Option(
        None, "--score-only", help='Score these {"id", "output"} lines instead of running a model.'
    ),
    prompts: str = typer.Option(
        "auto",
        "--prompts",
        help="Whose prompts and answer extraction: auto (the model's family; VideoChat-Flash's with --score-only), "
        "videochat_flash or video_xl (Video-XL's for mlvu, videomme and longvideobench).",
    ),
    cache_dir: Optional[Path] = CacheDirOpt,
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (each process takes cuda:LOCAL_RANK)."),
):
    """Evaluate on a benchmark with its official annotations, prompts and scoring (resumable, shardable)."""
    from . import benchmark
    from .base import PROMPT_STYLES
    from .runner import Shard, default_frames, run_eval
    from .runner import score_only as run_score_only

    if prompts not in ("auto", *PROMPT_STYLES):
        raise ConfigError(f"--prompts must be auto, {' or '.join(PROMPT_STYLES)}; got {prompts!r}")
    style = None if prompts == "auto" else prompts
    b = benchmark(bench, style)
    if not data.is_dir():
        raise InputError(f"--data {data}: no such folder")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if max_frames is not None and not 1 <= max_frames <= 100_000:
        raise ConfigError(f"--max-frames must be from 1 to 100000, got {max_frames}")
    questions = b.load(data)  # a malformed annotation fails here, once, before any process is launched
    if limit is not None:
        questions = questions[:limit]
    out = out or Path("eval-results") / b.name
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: not a folder")
    settings = {"benchmark": b.name, "data": str(data.resolve()), "limit": limit, "max_new_tokens": b.max_new_tokens}
    if score_only is not None:
        settings["prompt_style"] = b.style
        summary = run_score_only(b, questions, score_only, out, {**settings, "score_only": str(score_only)})
        return _report(summary, out)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        args = [
            bench,
            "--data",
            str(data),
            "--out",
            str(out),
            *(["--model", model] if model else []),
            *(["--max-frames", str(max_frames)] if max_frames else []),
            *(["--limit", str(limit)] if limit else []),
            *(["--cache-dir", str(cache_dir)] if cache_dir else []),
            "--dtype",
            dtype,
            "--device",
            device,
            "--prompts",
            prompts,
            *[arg for pair in sets or [] for arg in ("--set", pair)],
        ]
        code = torchrun("eval", nproc, args)
        if code != 0:
            raise typer.Exit(code)
        return None
    shard = Shard(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    if device.startswith("cuda") and shard.world > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    from ..flags import load_model
    from ..options import check_device

    check_device(device)
    m = load_model(model, sets, dtype, device)
    if style is None and b.style != benchmark(bench, m.family).style:  # the family's own prompts
        b = benchmark(bench, m.family)
        questions = b.load(data)[:limit]
    frames = max_frames or default_frames(m.family, b.name)
    settings.update(
        prompt_style=b.style,
        max_frames=frames,
        model_name=m.name,
        model_family=m.family,
        model_fingerprint=m.fingerprint(),
        dtype=dtype,
        processes=shard.world,
        subtitles=getattr(b, "subtitles", None),
    )
    if shard.world > 1:
        import datetime

        import torch.distributed as dist

        # a long benchmark: ranks may finish hours apart before the final barrier
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    from ..features import FeatureCache
    from ..pipeline import Pipeline

    try:
        summary = run_eval(
            Pipeline(m, FeatureCache(cache_dir)), b, questions, out, settings, shard, progress=sys.stderr.isatty()
        )
    finally:
        if shard.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if summary is not None:
        _report(summary, out)


def _report(summary: dict, out: Path) -> None:
    c = summary["counts"]
    print(
        f"{summary['benchmark']}: {summary['metric']} {summary['overall']:.2%} over {c['questions']} questions "
        f"({c['missing_video']} missing videos, {c['unreadable_video']} unreadable, "
        f"{c['missing_predictions']} without a prediction)"
    )
    print(
        json.dumps(
            {
                "overall": summary["overall"],
                "summary": str(out / "summary.json"),
                "predictions": str(out / "predictions.jsonl"),
                "chart": str(out / "accuracy.png"),
            }
        )
    )
