"""summary.json and the per-category chart from the prediction rows.

Accuracy is the mean row score over the run's questions: a question whose video is missing or
unreadable, or whose output names no option, scores 0 (as in the official scorers, which count every
question). Charades-STA rows score their IoU: the headline is mIoU plus R@1 at IoU 0.3 / 0.5 / 0.7
(the share of questions whose single predicted segment overlaps the truth at least that much).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .base import Benchmark, write_atomic
from .charades import THRESHOLDS


def _stats(rows: list[dict], bench: Benchmark) -> dict[str, Any]:
    n = len(rows)
    mean = sum(r["score"] for r in rows) / n if n else 0.0
    if bench.metric == "miou":
        recall = {f"R@1,IoU={t}": sum(r["score"] >= t for r in rows) / n if n else 0.0 for t in THRESHOLDS}
        return {"miou": mean, **recall, "count": n}
    return {"accuracy": mean, "correct": int(sum(r["score"] for r in rows)), "count": n}


def _found(extracted: Any) -> bool:
    """An option letter or a segment: what the scorer could compare (mcq_letter may hand back plain text)."""
    return isinstance(extracted, list) or (isinstance(extracted, str) and len(extracted) == 1 and extracted.isupper())


def _values(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def summarize(bench: Benchmark, rows: list[dict], questions: int, settings: dict[str, Any]) -> dict[str, Any]:
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups["task"][r.get("task") or ""].append(r)
        for key, value in (r.get("groups") or {}).items():
            if key == "task":
                continue
            for v in value if isinstance(value, list) else [value]:  # LVBench: several types per question
                groups[key][str(v)].append(r)
    for key in [k for k in groups if k != "task"]:  # Video-MME's task_type, LongVideoBench's category: once
        if all(
            len(v) == 1 and (r.get("task") or "") == v[0]
            for r in rows
            for v in [_values((r.get("groups") or {}).get(key))]
        ):
            del groups[key]
    errors: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.get("error_kind"):
            errors[r["error_kind"]] += 1
    answered = [r for r in rows if not r.get("error")]
    unparsed = sum(1 for r in answered if not _found(r.get("extracted")))
    by = {key: {name: _stats(rs, bench) for name, rs in sorted(values.items())} for key, values in groups.items()}
    overall = _stats(rows, bench)
    summary = {
        "benchmark": bench.name,
        "metric": bench.metric,
        "overall": overall[bench.metric],
        **({k: v for k, v in overall.items() if k.startswith("R@1")}),
        "counts": {
            "questions": questions,
            "predictions": len(rows),
            "missing_predictions": questions - len(rows),
            "missing_video": errors.get("missing_video", 0),
            "unreadable_video": errors.get("unreadable_video", 0),
            "budget": errors.get("budget", 0),
            "no_answer_found": unparsed,
        },
        "overall_without_video_errors": _stats(answered, bench)[bench.metric] if answered else None,
        # MLVU's "M-Avg" and MVBench's headline: the mean of per-task scores
        "mean_over_tasks": (sum(s[bench.metric] for s in by["task"].values()) / len(by["task"]))
        if by.get("task")
        else None,
        "by": by,
        "settings": settings,
    }
    return summary


def write_outputs(out: Path, summary: dict[str, Any]) -> None:
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    plot(summary, out / "accuracy.png")


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Horizontal bars per category of each grouping (task, duration, question type, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["metric"]
    panels = [(k, v) for k, v in summary["by"].items() if v]
    heights = [max(1.5, 0.3 * len(v) + 1) for _, v in panels] or [1.5]
    fig, axes = plt.subplots(
        len(panels) or 1, 1, figsize=(8, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for ax, (key, cats) in zip(axes[:, 0], panels):
        names = list(cats)
        values = [cats[n][metric] for n in names]
        ax.barh(range(len(names)), values, color="tab:blue")
        ax.set_yticks(range(len(names)), [f"{n or '(none)'} (n={cats[n]['count']})" for n in names], fontsize=7)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(f"by {key}", fontsize=9)
        for i, v in enumerate(values):
            ax.text(min(v, 0.9) + 0.01, i, f"{v:.1%}", va="center", fontsize=7)
    s = summary["settings"]
    name = Path(s.get("model_name") or "").name
    fig.suptitle(
        f"{summary['benchmark']}: {metric} {summary['overall']:.1%} - {name} ({s.get('max_frames')} frames)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
