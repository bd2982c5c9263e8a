"""`longvid eval`: the long-video benchmarks with their official annotations, prompts and scoring.

One file per benchmark format (the annotation layout, the prompt, the answer extraction), a shared
runner (runner.py: pipeline, resumable predictions.jsonl, sharding) and the summary (summary.py).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import PROMPT_STYLES, Benchmark, Question
from .charades import CharadesSTA
from .longvideobench import LongVideoBench
from .lvbench import LVBench
from .mlvu import MLVU
from .mvbench import MVBench
from .videomme import VideoMME

BENCHMARKS = {
    "mvbench": MVBench,
    "videomme": VideoMME,
    "videomme-sub": lambda: VideoMME(subtitles=True),
    "mlvu": MLVU,
    "longvideobench": LongVideoBench,
    "lvbench": LVBench,
    "charades-sta": CharadesSTA,
}


def benchmark(name: str, style: str | None = None) -> Benchmark:
    """The benchmark `name` with the prompts of `style` (a model family, see PROMPT_STYLES). A family whose own
    evaluation code has no prompt for this benchmark gets VideoChat-Flash's (the one fork that covers them all)."""
    key = name.lower().replace("_", "-")
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    bench = BENCHMARKS[key]()
    bench.name = key
    if style in bench.styles:
        bench.style = style
    return bench


__all__ = ["BENCHMARKS", "PROMPT_STYLES", "Benchmark", "Question", "benchmark"]
