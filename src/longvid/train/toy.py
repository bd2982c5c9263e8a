"""Generated training data for tests and the tiny examples: no files needed besides the YAML.

The `color` task: a square of one of four colours drifts over a noisy background and the answer is
its colour. It is learnable from the pixels alone, so a falling loss means the whole path (decoder,
sampler, tower, ToMe, projector, LLM) learns. Videos are written as `.npy` arrays (fast to read) or
H.264 `.mp4` files; a few samples are still images, so image and video records mix in one dataset.

    synthetic: {task: color, videos: 48, images: 16, frames: [8, 24], size: 64, fps: 4, format: npy, seed: 0}

The `needle` task (`longvid.data.needles`): haystacks of 1-fps frames with needle cards, questions in
the official NIAH wording (several per video), plus a fraction of text-only records.

    synthetic: {task: needle, samples: 2000, frames: [4, 32], distractors: 2, turns: 3, open: 0.3, text: 0.2}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230), "yellow": (235, 215, 40)}
QUESTIONS = ["What color is the shape?", "Which color is the shape in the video?", "Describe the color of the shape."]
DEFAULTS: dict[str, Any] = {
    "task": "color",
    "videos": 32,
    "images": 8,
    "frames": [8, 24],
    "size": 64,
    "fps": 4.0,
    "format": "npy",
    "seed": 0,
}
NEEDLE_DEFAULTS: dict[str, Any] = {
    "task": "needle",
    "samples": 200,
    "frames": [4, 32],
    "size": 64,
    "distractors": 2,
    "turns": 1,
    "open": 0.0,
    "text": 0.0,
    "lookup": 0.0,
    "jitter": 0.0,
    "neutral": 0.0,
    "pointer": 0.0,
    "neutral_letters": 0.0,
    "lookalike": 0.0,
    "near": 0.0,
    "hops": [1],
    "split": "train",
    "seed": 0,
}


def spec_of(synthetic: dict[str, Any]) -> dict[str, Any]:
    task = synthetic.get("task", "color")
    if task not in ("color", "needle"):
        raise ConfigError(f"data.synthetic.task {task!r} is unknown (known: color, needle)")
    defaults = NEEDLE_DEFAULTS if task == "needle" else DEFAULTS
    unknown = sorted(set(synthetic) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown setting data.synthetic.{unknown[0]} (known: {', '.join(sorted(defaults))})")
    spec = {**defaults, **synthetic}
    if task == "needle":
        lo, hi = spec["frames"]
        if not 0 <= int(lo) <= int(hi):
            raise ConfigError("data.synthetic.frames must be [min, max] with 0 <= min <= max")
        return spec
    if spec["format"] not in ("npy", "mp4"):
        raise ConfigError("data.synthetic.format must be npy or mp4")
    lo, hi = (spec["frames"], spec["frames"]) if isinstance(spec["frames"], int) else spec["frames"]
    if not 1 <= int(lo) <= int(hi):
        raise ConfigError("data.synthetic.frames must be N or [min, max] with 1 <= min <= max")
    spec["frames"] = [int(lo), int(hi)]
    return spec


def color_frames(num_frames: int, size: int, color: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, size, size, 3]: a square of `color` moving in a straight line over dim noise."""
    frames = rng.integers(0, 70, (num_frames, size, size, 3), dtype=np.uint8)
    side = max(4, size // 4)
    x, y = rng.uniform(0, size - side, 2)
    vx, vy = rng.uniform(-2, 2, 2)
    for t in range(num_frames):
        cx = int(np.clip(x + vx * t, 0, size - side))
        cy = int(np.clip(y + vy * t, 0, size - side))
        frames[t, cy : cy + side, cx : cx + side] = color
    return frames


def generate(folder: Path, synthetic: dict[str, Any]) -> Path:
    """Write the dataset into `folder` (once: reused when it exists) and return its records.jsonl."""
    spec = spec_of(synthetic)
    folder = Path(folder)
    if not (folder / "records.jsonl").is_file():
        from .checkpointing import building

        with building(folder) as tmp:  # a killed run never leaves half a dataset
            _write(tmp, spec)
    return folder / "records.jsonl"


def synthetic_specs(synthetic: dict[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A stage's generated sets: none, one, or a mixture (their records concatenated, then shuffled by the
    sampler as one dataset)."""
    specs = [] if synthetic is None else [synthetic] if isinstance(synthetic, dict) else list(synthetic)
    if isinstance(synthetic, list) and any(s.get("task") == "cards" for s in specs):
        raise ConfigError("data.synthetic: task cards (vision pre-training) cannot be mixed with other sets")
    return specs


def folder_for(base: Path, synthetic: dict[str, Any]) -> Path:
    """A folder per distinct spec, so stages with the same synthetic data share it."""
    key = hashlib.sha1(json.dumps(spec_of(synthetic), sort_keys=True).encode()).hexdigest()[:10]
    return base / f"synthetic-{key}"


def _write(folder: Path, spec: dict[str, Any]) -> None:
    if spec["task"] == "needle":
        from ..data.needles import write_training_set

        write_training_set(
            folder,
            int(spec["samples"]),
            tuple(spec["frames"]),
            seed=int(spec["seed"]),
            size=int(spec["size"]),
            hops=tuple(spec["hops"]),
            split=spec["split"],
            distractors=int(spec["distractors"]),
            turns=int(spec["turns"]),
            open_ratio=float(spec["open"]),
            text=float(spec["text"]),
            lookup=float(spec["lookup"]),
            jitter=float(spec["jitter"]),
            neutral=float(spec["neutral"]),
            pointer=float(spec["pointer"]),
            neutral_letters=float(spec["neutral_letters"]),
            lookalike=float(spec["lookalike"]),
            near=float(spec["near"]),
        )
        return
    from PIL import Image

    from ..data.synthetic import write_video

    folder.mkdir(parents=True)
    rng = np.random.default_rng(spec["seed"])
    names = list(COLORS)
    size, fps = int(spec["size"]), float(spec["fps"])
    lines = []
    for i in range(int(spec["videos"])):
        color = names[i % len(names)]
        n = int(rng.integers(spec["frames"][0], spec["frames"][1] + 1))
        frames = color_frames(n, size, COLORS[color], rng)
        record: dict[str, Any] = {"id": f"video-{i:05d}"}
        if spec["format"] == "npy":
            np.save(folder / f"{record['id']}.npy", frames)
            record.update(video=f"{record['id']}.npy", fps=fps)
        else:
            write_video(folder / f"{record['id']}.mp4", frames, fps=fps, gop=12)
            record["video"] = f"{record['id']}.mp4"
        question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        record["conversations"] = [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": f"The shape is {color}."},
        ]
        lines.append(record)
    for i in range(int(spec["images"])):
        color = names[(i + 1) % len(names)]
        frame = color_frames(1, size, COLORS[color], rng)[0]
        name = f"image-{i:05d}.png"
        Image.fromarray(frame).save(folder / name)
        lines.append(
            {
                "id": name[:-4],
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat color is the shape in this picture?"},
                    {"from": "gpt", "value": f"The shape is {color}."},
                ],
            }
        )
    order = rng.permutation(len(lines))
    (folder / "records.jsonl").write_text("".join(json.dumps(lines[j]) + "\n" for j in order))
