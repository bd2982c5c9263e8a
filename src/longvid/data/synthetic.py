"""Procedurally generated videos: deterministic by seed, written with PyAV's bundled encoders."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


def moving_shapes(num_frames: int, height: int = 96, width: int = 128, seed: int = 0) -> Iterator[np.ndarray]:
    """Frames of a gradient background with a few shapes drifting across it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), np.full_like(xx, int(rng.integers(0, 256)))], -1
    ).astype(np.uint8)
    shapes = [
        (
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(-2, 2),
            rng.uniform(-2, 2),
            rng.integers(6, max(7, min(height, width) // 5)),
            rng.integers(0, 256, 3),
        )
        for _ in range(3)
    ]
    for t in range(num_frames):
        frame = base.copy()
        for x0, y0, vx, vy, r, color in shapes:
            cx, cy = (x0 + vx * t) % width, (y0 + vy * t) % height
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = color
        yield frame


INDEX_BITS = 20


def index_frames(num_frames: int, height: int = 64, width: int = 96, start: int = 0) -> Iterator[np.ndarray]:
    """Frames that carry their own index as a block code (robust to lossy compression)."""
    cell_h, cell_w = height // 4, width // 5
    for i in range(start, start + num_frames):
        frame = np.full((height, width, 3), 30, np.uint8)
        frame[..., 2] = (i * 7) % 200  # a changing background so consecutive frames differ
        for bit in range(INDEX_BITS):
            if (i >> bit) & 1:
                r, c = divmod(bit, 5)
                frame[r * cell_h + 2 : (r + 1) * cell_h - 2, c * cell_w + 2 : (c + 1) * cell_w - 2, :2] = 235
        yield frame


def read_index(frame: np.ndarray) -> int:
    """The index written by `index_frames` (read at each cell's centre)."""
    height, width = frame.shape[:2]
    cell_h, cell_w = height // 4, width // 5
    value = 0
    for bit in range(INDEX_BITS):
        r, c = divmod(bit, 5)
        if frame[r * cell_h + cell_h // 2, c * cell_w + cell_w // 2, 0] > 130:
            value |= 1 << bit
    return value


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 30,
    codec: str = "libx264",
    gop: int = 250,
    bframes: int = 2,
    crf: int = 23,
) -> Path:
    """Encode RGB uint8 frames to `path` (H.264 with B-frames by default)."""
    from fractions import Fraction

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        if codec in ("libx264", "libx265"):
            stream.options = {"crf": str(crf), "g": str(gop), "bf": str(bframes), "preset": "veryfast"}
        else:
            stream.options = {"g": str(gop)}
        for frame in _chain(first, frames):
            vf = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(frame[: stream.height, : stream.width]), format="rgb24"
            )
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return path


def _chain(first, rest):
    yield first
    yield from rest
