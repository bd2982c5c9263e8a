"""`longvid info`: what a video is, and what a model would make of it, before any heavy work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from .options import SamplingOptions
from .pipeline import Pipeline


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class VideoReport:
    video: dict[str, Any]
    plan: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video, "plan": self.plan, "budget": self.budget, "model": self.model, **self.extra}

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        t = Table(show_header=False, box=None, pad_edge=False)
        v = self.video
        t.add_row("file", str(v["source"]))
        t.add_row("format", f"{v['container']} / {v['codec']}, {v['width']}x{v['height']}")
        t.add_row("frames", f"{v['num_frames']} at {v['fps']:.3f} fps = {v['duration']:.2f} s")
        for w in v["warnings"]:
            t.add_row("warning", w)
        if self.model:
            t.add_row("model", f"{self.model['name']} ({self.model['family']})")
            t.add_row("compression", "; ".join(self.model["compressors"]) or "none")
        if self.plan:
            p = self.plan
            ts = p["timestamps"]
            t.add_row(
                "plan",
                f"{p['name']}: {len(p['indices'])} frames, {ts[0]:.2f} s .. {ts[-1]:.2f} s "
                f"(first indices {p['indices'][:6]})",
            )
        if self.budget:
            b = self.budget
            layers = b["kv_tokens_per_layer"]
            t.add_row("visual tokens", f"{b['visual_tokens']}")
            t.add_row(
                "context",
                f"{b['context_tokens']} of {b['context_limit']} tokens ({'fits' if b['fits'] else 'DOES NOT FIT'})",
            )
            t.add_row(
                "KV cache",
                f"{human_bytes(b['kv_bytes'])} ({self.model['dtype']}); tokens per layer "
                f"{min(layers)}..{max(layers)} over {len(layers)} layers",
            )
        for key, value in self.extra.items():
            t.add_row(key, str(value))
        console.print(t)


def video_report(video, model=None, sampling: SamplingOptions | None = None) -> VideoReport:
    info = video.info
    report = VideoReport(
        {
            "source": video.source,
            "container": info.container,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "num_frames": info.num_frames,
            "duration": info.duration,
            "warnings": list(video.warnings),
        }
    )
    if model is None:
        return report
    pipeline = Pipeline(model)
    sampling = sampling or SamplingOptions()
    plan = pipeline.plan(video, sampling)
    prompt = pipeline.prompt(plan, check=False)  # a report shows a prompt that does not fit, it does not refuse it
    report.plan = plan.to_dict()
    report.budget = prompt.budget.to_dict()
    report.model = {
        "name": model.name,
        "family": model.family,
        "dtype": str(model.dtype).replace("torch.", ""),
        "compressors": [c.describe() for c in model.compressors],
    }
    if hasattr(model, "memory_report"):
        report.extra["memory"] = model.memory_report(len(plan))
    return report
