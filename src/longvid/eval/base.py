"""What every benchmark format supplies, and the records the runner passes around.

A benchmark reads its OFFICIAL annotation files (`load`), says which video file a question is about,
the exact prompt text the model gets, and how a raw model output becomes an answer and a score. The
runner (runner.py) does everything else the same way for all of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError


@dataclass
class Question:
    id: str  # the benchmark's own id, or "<task>/<index>" where it has none
    task: str  # sub-task / file the question came from
    video: str  # resolved path (may not exist: counted as a missing video, never fatal)
    prompt: str  # the exact user text given to the model
    answer: Any  # ground truth: an option letter, or [start, end] seconds (grounding)
    groups: dict[str, str] = field(default_factory=dict)  # duration / question_type / ... for the summary
    start: float | None = None  # seconds: a clip of the video (MVBench's bound)
    end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what extraction needs (options, ...)


# Whose evaluation code the prompts and answer extraction reproduce. VideoChat-Flash's lmms-eval fork is the
# default (it covers every benchmark here); Video-XL evaluated only MLVU, Video-MME and LongVideoBench with
# lmms-eval (Video-XL/README.md, "Long Video Benchmark Evaluation"), so only those have a "video_xl" style.
PROMPT_STYLES = ("videochat_flash", "video_xl")


class Benchmark:
    """One benchmark format. Subclasses set the class attributes and implement load / extract / score."""

    name = ""
    style = "videochat_flash"  # see PROMPT_STYLES; set by `longvid.eval.benchmark(name, style)`
    styles: tuple[str, ...] = ("videochat_flash",)  # the styles this benchmark reproduces
    max_new_tokens = 16  # the task yaml's generation_kwargs
    long = True  # long-video benchmark: the family's long-video frame count applies
    metric = "accuracy"

    def load(self, data: Path) -> list[Question]:
        raise NotImplementedError

    def extract(self, output: str, q: Question) -> Any:
        """The answer the official code reads out of a raw output ("" / None when it finds none)."""
        raise NotImplementedError

    def score(self, extracted: Any, q: Question) -> float:
        return float(extracted == q.answer)


# ------------------------------------------------------------------------------------------ helpers


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable annotation json ({e})") from None


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not readable ({e})") from None
    for n, line in enumerate(lines):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n + 1}: not a JSON line ({e})") from None
    return rows


def first_existing(*candidates: Path) -> Path:
    """The first candidate that exists, else the first (reported later as a missing video)."""
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def need(item: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(item, dict) or any(k not in item for k in keys):
        missing = [k for k in keys if not isinstance(item, dict) or k not in item]
        raise InputError(f"{where}: not in the official format (missing {', '.join(missing)})")


def letters(n: int) -> str:
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n]


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once (a reader or a crash sees the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
