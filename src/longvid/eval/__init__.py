"""`longvid eval`: the long-video benchmarks with their official annotations, prompts and scoring.

One file per benchmark format (the annotation layout, the prompt, the answer extraction), a shared
runner (runner.py: pipeline, resumable predictions.jsonl, sharding) and the summary (summary.py).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Benchmark, Question
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


def benchmark(name: str) -> Benchmark:
    key = name.lower().replace("_", "-")
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    bench = BENCHMARKS[key]()
    bench.name = key
    return bench


__all__ = ["BENCHMARKS", "Benchmark", "Question", "benchmark"]
