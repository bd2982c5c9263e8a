"""`make demo` / `longvid demo`: the whole path from a video file to an answer, on this machine."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console


def run(out_dir: str | Path | None = None) -> None:
    from .assets import default_model_path
    from .data.synthetic import moving_shapes, write_video
    from .models import load
    from .tiny import make_checkpoint, tiny_videochat_flash_config

    console = Console()
    out = Path(out_dir or tempfile.mkdtemp(prefix="longvid-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    video = write_video(out / "shapes.mp4", moving_shapes(30 * 60, 96, 128, seed=0), fps=30)
    console.print(f"[bold]video[/]  {video} (60 s, 30 fps, H.264) written in {time.perf_counter() - t0:.1f} s")
    model_path = default_model_path()
    if model_path is None:
        model_path = make_checkpoint(out / "tiny-random", tiny_videochat_flash_config(512))
        console.print("[yellow]no trained model is bundled: using a RANDOMLY INITIALISED tiny model, "
                      "so the answer below is noise; it shows the pipeline, not understanding.[/]")
    model = load(model_path)
    question = "What shape moves across the frames, and what color is it?"
    answer = model.ask(video, question, max_new_tokens=24)
    console.print(f"[bold]question[/] {question}")
    console.print(f"[bold]answer[/]   {answer.text!r}")
    t = answer.timings
    console.print(f"[bold]frames[/]   {answer.num_frames} sampled -> {answer.num_visual_tokens} visual tokens; "
                  f"decode {t['decode']:.2f} s, encode {t['encode']:.2f} s, prefill {t['prefill']:.2f} s, "
                  f"generate {t['generate']:.2f} s")
