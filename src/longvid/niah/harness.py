"""Video needle-in-a-haystack: a grid of context lengths x depths (single-hop) or chains (multi-hop).

Two insertion levels:

* `pixel`: needle frames are spliced into the haystack's frames before anything else, so they are
  resized, encoded and ToMe-merged together with their haystack neighbours (a needle sharing a clip
  with haystack frames can be merged away: this is what the official harness cannot see);
* `embedding`: the haystack is encoded once (the `longvid encode` format), each needle is encoded on
  its own as a clip of identical frames, and its tokens are spliced in at the frame position (the
  official VideoChat-Flash protocol).

Placement follows the official formulas (`placement.py`). Scoring is the official letter match, both
teacher-forced (the answer letter is the argmax after the prompt) and on greedy generations.
Every finished trial is appended to `trials.jsonl` at once, so an interrupted run resumes where it
stopped; `summary.json` and a heatmap PNG are written at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.needles import (
    Needle,
    NeedleQuestion,
    haystack,
    multi_hop_chain,
    needle_card,
    random_needle,
    single_hop_question,
)
from ..errors import ConfigError, InputError
from ..features import load_features, save_features
from ..models.base import VideoLLM
from ..options import GenerationOptions
from ..outputs import VisualTokens
from ..pipeline import Pipeline
from ..video import SamplingPlan, Video, VideoInfo, fps_plan, open_video
from ..video.reader import ArrayVideo
from .placement import multi_hop_positions, single_hop_position
from .records import RecordWriter, read_records


@dataclass
class NiahSettings:
    frames: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    hops: int = 1  # 1 = single-hop; K > 1 = chains of K needles
    level: str = "pixel"
    trials: int = 4  # needles per cell
    seed: int = 0
    haystack: str = "synthetic"  # or a video file sampled at 1 fps
    needles: str = "synthetic"  # or an official NIAH json (single- or multi-hop format)
    needle_frames: int = 1  # pixel level: frames each needle occupies
    size: int = 64  # synthetic frame size
    split: str = "test"  # synthetic needles: "test" = shape/colour pairs never used in training
    max_new_tokens: int = 4

    def validate(self) -> None:
        if self.level not in ("pixel", "embedding"):
            raise ConfigError("--level must be pixel or embedding")
        if not self.frames or min(self.frames) < 1:
            raise ConfigError("--frames needs positive frame counts")
        if self.hops == 1 and any(not 0 <= d <= 1 for d in self.depths):
            raise ConfigError("--depths must lie in [0, 1]")
        if self.hops < 1 or self.trials < 1 or self.needle_frames < 1:
            raise ConfigError("--hops, --trials and --needle-frames must be at least 1")


@dataclass
class Trial:
    frames: int
    depth: float | None
    index: int
    images: list[np.ndarray]  # needle images, in the order they are placed in time
    positions: list[int]  # haystack frame index before which each is inserted
    questions: list[NeedleQuestion]
    description: str

    @property
    def key(self) -> str:
        return f"{self.frames}|{self.depth}|{self.index}"


# ------------------------------------------------------------------------------------------- needles


def _official_items(path: Path) -> list[dict]:
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable needle json ({e})") from None
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: expected a list of needles")
    return items


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise InputError(f"{path}: not a readable needle image ({e})") from None


def make_trial(s: NiahSettings, frames: int, depth: float | None, index: int) -> Trial:
    """The needle(s), questions and positions of one trial (deterministic in seed, frames, depth, index)."""
    rng = np.random.default_rng([s.seed, frames, int(round((depth or 0) * 1000)), index])
    if s.needles != "synthetic":
        item = _official_items(Path(s.needles))[index % len(_official_items(Path(s.needles)))]
        root = Path(s.needles).parent
        if "images" in item:  # official multi-hop: images in placement order, two questions
            images = [_load_image(root / p) for p in item["images"]]
            qs = [
                NeedleQuestion(item["question1"], item["answer1"], "q1"),
                NeedleQuestion(item["question2"], item["answer2"], "q2"),
            ]
            return Trial(
                frames, None, index, images, multi_hop_positions(frames, len(images)), qs, item["question1"][:60]
            )
        q = NeedleQuestion(item["question"], item["answer"], "single")
        return Trial(
            frames,
            depth,
            index,
            [_load_image(root / item["image"])],
            [single_hop_position(frames, depth or 0)],
            [q],
            str(item.get("image")),
        )
    if s.hops == 1:
        needle = random_needle(rng, s.split)
        return Trial(
            frames,
            depth,
            index,
            [needle_card(needle, s.size, int(rng.integers(2**31)))],
            [single_hop_position(frames, depth or 0)],
            [single_hop_question(needle, rng)],
            needle.caption,
        )
    chain = multi_hop_chain(s.hops, rng, s.split)
    order = rng.permutation(s.hops)  # chain order is not time order (as in the official data)
    cards: list[Needle] = [chain.cards[i] for i in order]
    images = [needle_card(c, s.size, int(rng.integers(2**31))) for c in cards]
    desc = " -> ".join(f"{c.caption}" for c in chain.cards)
    return Trial(frames, None, index, images, multi_hop_positions(frames, s.hops), chain.questions, desc)


# ------------------------------------------------------------------------------------------- haystacks


class Haystack:
    """The haystack's frames at 1 fps: synthetic (generated once) or sampled from a video file (cycled)."""

    def __init__(self, s: NiahSettings):
        self.max_frames = max(s.frames)
        if s.haystack == "synthetic":
            self.video: Video = ArrayVideo(
                np.stack(list(haystack(self.max_frames, s.size, s.seed))), 1.0, f"synthetic(seed={s.seed})"
            )
            self.indices = list(range(self.max_frames))
        else:
            self.video = open_video(s.haystack)
            per_second = fps_plan(self.video.num_frames, self.video.fps, 1.0).indices
            self.indices = [per_second[i % len(per_second)] for i in range(self.max_frames)]  # cycle short videos

    def spliced(self, frames: int, images: list[np.ndarray], positions: list[int], repeat: int) -> SplicedVideo:
        return SplicedVideo(self.video, self.indices[:frames], images, positions, repeat)


class SplicedVideo(Video):
    """Haystack frames with needle images inserted, streamed (never all frames in memory)."""

    def __init__(self, base: Video, hay: list[int], images: list[np.ndarray], positions: list[int], repeat: int):
        self.base, self.warnings, self.source = base, [], base.source
        self.sequence: list[tuple[str, int]] = []
        inserts = sorted(zip(positions, range(len(images))))
        cursor = 0
        for pos, j in inserts:
            self.sequence += [("hay", i) for i in hay[cursor:pos]] + [("needle", j)] * repeat
            cursor = pos
        self.sequence += [("hay", i) for i in hay[cursor:]]
        h, w = base.info.height, base.info.width
        self.images = [_fit(img, h, w) for img in images]
        self.info = VideoInfo(len(self.sequence), 1.0, w, h, base.info.codec, "niah")

    def _frames_sorted(self, indices):
        wanted = [self.sequence[i] for i in indices]
        hay = iter(self.base.frames([i for kind, i in wanted if kind == "hay"]))
        for i, (kind, j) in zip(indices, wanted):
            yield i, next(hay) if kind == "hay" else self.images[j]


def _fit(image: np.ndarray, h: int, w: int) -> np.ndarray:
    if image.shape[:2] == (h, w):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))


# ------------------------------------------------------------------------------------------- one trial


def full_plan(num_frames: int, clip: int) -> SamplingPlan:
    return SamplingPlan(list(range(num_frames)), 1.0, float(num_frames), num_frames, "niah").padded_to_multiple(clip)


def letter_of(text: str) -> str:
    """The official letter match: text up to ')' with '(' stripped, first character, upper-cased."""
    text = text.strip().split(")")[0].replace("(", "").strip()
    return text[:1].upper()


@torch.no_grad()
def score(model: VideoLLM, visual: VisualTokens, q: NeedleQuestion, max_new_tokens: int) -> dict:
    """Greedy generation, then teacher forcing on the same prompt (the video prefix is reused, not recomputed)."""
    pipeline = Pipeline(model)
    prompt = pipeline.prompt(visual.plan, q.question)
    answer, prefix = pipeline.answer(prompt, visual, GenerationOptions(max_new_tokens=max_new_tokens, do_sample=False))
    step_logits, cache, _ = pipeline.prefill(prompt, visual, prefix)
    predicted = []
    for token in model.tokenizer(q.answer, add_special_tokens=False).input_ids:  # argmax at each answer position
        predicted.append(int(step_logits.argmax()))
        step_logits = model.decode_step([token], cache)
    teacher = letter_of(model.tokenizer.decode(predicted, skip_special_tokens=True))
    text = model.tokenizer.decode(answer.token_ids, skip_special_tokens=True)
    truth = q.answer.strip().upper()
    return {
        "answer": truth,
        "teacher_forced": teacher,
        "generated": text,
        "correct": teacher == truth,
        "correct_generated": letter_of(text) == truth,
        "kind": q.kind,
    }


class NeedleEncoder:
    """Embedding level: the haystack encoded once, each needle encoded alone as a clip."""

    def __init__(self, model: VideoLLM, hay: Haystack, out: Path, clip: int, progress: bool = False):
        self.model, self.clip = model, clip
        path = out / "haystack_features.safetensors"
        if path.is_file():
            self.visual = load_features(path, model)
        else:
            plan = full_plan(hay.max_frames, clip)
            self.visual, _ = Pipeline(model).encode(hay.spliced(hay.max_frames, [], [], 1), plan, progress)
            save_features(path, self.visual, model, source=str(hay.video.source))
        self.per_frame = self.visual.tokens.shape[0] // len(self.visual.plan)

    def splice(self, trial: Trial) -> VisualTokens:
        tokens = self.visual.tokens[: trial.frames * self.per_frame]
        pieces, cursor = [], 0
        for pos, image in sorted(zip(trial.positions, trial.images), key=lambda p: p[0]):
            needle = ArrayVideo(np.stack([image] * self.clip), 1.0)
            clip = self.model.encode_video(needle, full_plan(self.clip, self.clip))
            pieces += [tokens[cursor * self.per_frame : pos * self.per_frame], clip.tokens]
            cursor = pos
        pieces.append(tokens[cursor * self.per_frame :])
        n = trial.frames + self.clip * len(trial.images)
        plan = SamplingPlan(list(range(n)), 1.0, float(n), n, "niah")
        return VisualTokens(torch.cat(pieces), plan)


def run_trial(model: VideoLLM, s: NiahSettings, hay: Haystack, trial: Trial, encoder: NeedleEncoder | None) -> dict:
    t0 = time.perf_counter()
    clip = getattr(model.config, "frames_per_clip", 1)
    if encoder is not None:
        visual = encoder.splice(trial)
    else:
        video = hay.spliced(trial.frames, trial.images, trial.positions, s.needle_frames)
        visual, _ = Pipeline(model).encode(video, full_plan(video.num_frames, clip))
    results = [score(model, visual, q, s.max_new_tokens) for q in trial.questions]
    return {
        "key": trial.key,
        "frames": trial.frames,
        "depth": trial.depth,
        "trial": trial.index,
        "needle": trial.description,
        "positions": trial.positions,
        "visual_tokens": int(visual.tokens.shape[0]),
        "questions": results,
        "correct": all(r["correct"] for r in results),
        "accuracy": float(np.mean([r["correct"] for r in results])),
        "accuracy_generated": float(np.mean([r["correct_generated"] for r in results])),
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------------- the grid


def grid(s: NiahSettings) -> list[tuple[int, float | None, int]]:
    depths: list[float | None] = list(s.depths) if s.hops == 1 and not _is_official_multi(s) else [None]
    return [(f, d, i) for f in s.frames for d in depths for i in range(s.trials)]


def _is_official_multi(s: NiahSettings) -> bool:
    return s.needles != "synthetic" and "images" in _official_items(Path(s.needles))[0]


def run_niah(model: VideoLLM, s: NiahSettings, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) the grid into `out`; returns the summary (also written to out/summary.json)."""
    from tqdm.auto import tqdm

    s.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**asdict(s), "model": model.name, "family": model.family}
    settings_path, trials_path = out / "settings.json", out / "trials.jsonl"
    if settings_path.is_file() and json.loads(settings_path.read_text()) != json.loads(json.dumps(settings)):
        raise ConfigError(f"{out} holds a run with other settings; choose another --out")
    settings_path.write_text(json.dumps(settings, indent=2))
    done = {r["key"]: r for r in read_records(trials_path) if "key" in r}
    todo = [g for g in grid(s) if f"{g[0]}|{g[1]}|{g[2]}" not in done]
    hay = Haystack(s)
    encoder = (
        NeedleEncoder(model, hay, out, getattr(model.config, "frames_per_clip", 4), progress)
        if s.level == "embedding"
        else None
    )
    with (
        RecordWriter(trials_path) as f,
        tqdm(
            total=len(grid(s)), initial=len(grid(s)) - len(todo), desc="niah", unit="trial", disable=not progress
        ) as bar,
    ):
        for frames, depth, index in todo:
            record = run_trial(model, s, hay, make_trial(s, frames, depth, index), encoder)
            f.append(record)
            done[record["key"]] = record
            bar.set_postfix(acc=f"{np.mean([r['accuracy'] for r in done.values()]):.2f}")
            bar.update(1)
    summary = summarize(list(done.values()), settings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from .plot import plot_summary

    plot_summary(summary, out / "heatmap.png")
    return summary


def summarize(records: list[dict], settings: dict) -> dict:
    cells: dict[str, dict] = {}
    for r in records:
        cell = cells.setdefault(
            f"{r['frames']}|{r['depth']}",
            {"frames": r["frames"], "depth": r["depth"], "trials": 0, "correct": 0.0, "correct_generated": 0.0},
        )
        cell["trials"] += 1
        cell["correct"] += r["accuracy"]
        cell["correct_generated"] += r["accuracy_generated"]
    for cell in cells.values():
        cell["accuracy"] = cell.pop("correct") / cell["trials"]
        cell["accuracy_generated"] = cell.pop("correct_generated") / cell["trials"]
    by_frames: dict[str, dict] = {}
    for f in sorted({r["frames"] for r in records}):
        rs = [r for r in records if r["frames"] == f]
        by_frames[str(f)] = {
            "accuracy": float(np.mean([r["accuracy"] for r in rs])),
            "accuracy_generated": float(np.mean([r["accuracy_generated"] for r in rs])),
            "trials": len(rs),
        }
    questions = [q for r in records for q in r["questions"]]
    return {
        "accuracy": float(np.mean([q["correct"] for q in questions])) if questions else 0.0,
        "accuracy_generated": float(np.mean([q["correct_generated"] for q in questions])) if questions else 0.0,
        "trials": len(records),
        "both_correct": float(np.mean([r["correct"] for r in records])) if records else 0.0,
        "by_frames": by_frames,
        "cells": sorted(cells.values(), key=lambda c: (c["frames"], c["depth"] if c["depth"] is not None else -1)),
        "settings": settings,
    }
