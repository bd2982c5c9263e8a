"""metrics.jsonl (one line per optimizer step, flushed at once) and the loss plot drawn from it.

Each line: `step` (counted over all stages), `stage`, `stage_step`, `loss` (mean over the supervised
tokens of the global batch; null if it had none), `lr` (the largest of `lrs`, one per trained module),
`grad_norm` (before clipping), `tokens` (supervised tokens), `samples` (loaded; skipped ones excluded),
`skipped` (so far in the stage) and `seconds` (wall time of the step).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def rewind(self, global_step: int) -> None:
        """Drop lines after `global_step` (steps a killed run did past its last checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines(keepends=True)
            if line.strip() and _step(line) is not None and _step(line) <= global_step
        ]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self, png: Path) -> Path | None:
        """Loss per step (stages shaded apart) as a PNG; None when there is nothing to draw."""
        rows = [r for r in self.read() if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
        if not self.enabled or not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        stages: list[str] = []
        for r in rows:
            if not stages or stages[-1] != r.get("stage"):
                stages.append(r.get("stage"))
        for i, name in enumerate(stages):
            part = [r for r in rows if r.get("stage") == name]
            ax.plot([r["step"] for r in part], [r["loss"] for r in part], lw=1.2, label=str(name))
            if i:
                ax.axvline(part[0]["step"] - 0.5, color="grey", lw=0.6, ls="--")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (mean over supervised tokens)")
        ax.grid(alpha=0.3)
        if len(stages) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(png)
        plt.close(fig)
        return png


def _step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
