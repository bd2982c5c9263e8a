"""`longvid niah`: run (or resume) a needle-in-a-haystack grid and write summary.json + a heatmap."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..flags import DtypeOpt, ModelOpt, SetOpt, load_model


def _numbers(text: str, kind=float) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def niah(
    out: Path = typer.Option(..., "--out", help="Folder for trials.jsonl, summary.json and heatmap.png."),
    model: Optional[str] = ModelOpt,
    haystack: str = typer.Option("synthetic", "--haystack", help="A video file (sampled at 1 fps) or 'synthetic'."),
    needles: str = typer.Option(
        "synthetic", "--needles", help="'synthetic' or an official NIAH json (single/multi-hop)."
    ),
    frames: str = typer.Option("250,500,1000,2000", "--frames", help="Haystack lengths in frames."),
    depths: str = typer.Option("0,0.25,0.5,0.75,1", "--depths", help="Needle depths (single-hop)."),
    hops: int = typer.Option(1, "--hops", help="1 = single-hop; K = chains of K needles."),
    level: str = typer.Option("pixel", "--level", help="pixel or embedding."),
    trials: int = typer.Option(4, "--trials", help="Needles per cell."),
    seed: int = typer.Option(0, "--seed"),
    needle_frames: int = typer.Option(1, "--needle-frames", help="Pixel level: frames each needle lasts."),
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
):
    """Needle-in-a-haystack: accuracy over haystack lengths x depths (or multi-hop chains)."""
    from .harness import NiahSettings, run_niah

    settings = NiahSettings(
        frames=_numbers(frames, int),
        depths=_numbers(depths),
        hops=hops,
        level=level,
        trials=trials,
        seed=seed,
        haystack=haystack,
        needles=needles,
        needle_frames=needle_frames,
    )
    settings.validate()
    if haystack != "synthetic" and not Path(haystack).is_file():
        raise ConfigError(f"--haystack {haystack}: no such video file")
    m = load_model(model, sets, dtype, "cpu")
    summary = run_niah(m, settings, out, progress=sys.stderr.isatty())
    rows = [
        f"{f:>6} frames: {v['accuracy']:.1%} (generated {v['accuracy_generated']:.1%}, {v['trials']} trials)"
        for f, v in summary["by_frames"].items()
    ]
    print("\n".join(rows))
    print(
        json.dumps(
            {
                "accuracy": summary["accuracy"],
                "accuracy_generated": summary["accuracy_generated"],
                "summary": str(out / "summary.json"),
                "heatmap": str(out / "heatmap.png"),
            }
        )
    )
