"""Which frames to look at: small, named sampling plans that report indices and timestamps.

* `videochat_flash_plan`: the official VideoChat-Flash sampler ("dynamic ~1 fps"): a multiple of 8
  frames close to one per second, capped by `max_frames`, floored at 64 (the floor wins over the cap),
  taking the middle frame of equal segments and padding with the last frame when the video is short.
* `uniform_plan`: N segment middles.
* `fps_plan`: F frames per second (segment centres), thinned uniformly to `max_frames`.
* `linspace_plan`: Video-XL's `np.linspace(0, T - 1, N, dtype=int)`.
* `timestamps_plan`: the frames nearest to explicit times (seconds).

All plans take `num_frames` and `fps` of the (possibly start/end-trimmed) source, and a `first_index`
offset for trimmed sources, so indices always refer to the original file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError


@dataclass
class SamplingPlan:
    indices: list[int]  # frame indices into the source video, in playback order (may repeat when padded)
    fps: float  # frame rate of the source
    duration: float  # seconds covered by the sampled range (what the time message reports)
    source_frames: int  # frames in the sampled range
    name: str = "custom"
    first_index: int = 0
    timestamps: list[float] = field(default_factory=list)

    def __post_init__(self):
        if not self.timestamps:
            self.timestamps = [round(i / self.fps, 3) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def image(cls) -> SamplingPlan:
        """The plan of a single still image (models use their image path, without a time message)."""
        return cls([0], 1.0, 0.0, 1, "image")

    @property
    def is_image(self) -> bool:
        return self.name == "image"

    def padded_to_multiple(self, k: int) -> SamplingPlan:
        """Repeat the last frame until the count is a multiple of `k` (clips of k frames)."""
        missing = (-len(self.indices)) % k
        if not missing:
            return self
        return SamplingPlan(
            self.indices + [self.indices[-1]] * missing,
            self.fps,
            self.duration,
            self.source_frames,
            self.name,
            self.first_index,
        )


def _check(num_frames: int, fps: float) -> None:
    if num_frames < 1:
        raise InputError("the video has no frames to sample")
    if not fps or fps <= 0:
        raise InputError("the video's frame rate is unknown; pass --fps")


def _offset(indices, first_index: int) -> list[int]:
    return [int(i) + first_index for i in indices]


def segment_middles(num_frames: int, n: int) -> list[int]:
    """Middle frame of each of min(n, num_frames) equal segments, padded with the last to n."""
    k = min(n, num_frames)
    edges = np.linspace(0, num_frames, k + 1).astype(int)
    idx = [(int(edges[i]) + int(edges[i + 1]) - 1) // 2 for i in range(k)]
    return idx + [idx[-1]] * (n - k)


def videochat_flash_plan(
    num_frames: int, fps: float, max_frames: int = 512, min_frames: int = 64, multiple: int = 8, first_index: int = 0
) -> SamplingPlan:
    _check(num_frames, fps)
    if min_frames > num_frames:
        min_frames = (num_frames // multiple) * multiple
    duration = float(num_frames) / fps
    segments = int(duration // multiple)
    n = multiple * segments if segments else multiple
    if max_frames > 0:
        n = min(n, max_frames)
    n = max(min_frames, n)
    return SamplingPlan(
        _offset(segment_middles(num_frames, n), first_index), fps, duration, num_frames, "videochat_flash", first_index
    )


def uniform_plan(num_frames: int, fps: float, n: int, first_index: int = 0) -> SamplingPlan:
    _check(num_frames, fps)
    if n < 1:
        raise InputError("the number of frames to sample must be at least 1")
    return SamplingPlan(
        _offset(segment_middles(num_frames, n), first_index), fps, num_frames / fps, num_frames, "uniform", first_index
    )


def fps_plan(num_frames: int, fps: float, target_fps: float, max_frames: int = 0, first_index: int = 0) -> SamplingPlan:
    """The frame showing the middle of each 1/`target_fps` interval (at most one per source frame)."""
    _check(num_frames, fps)
    if not target_fps > 0:
        raise InputError("--fps must be positive")
    target_fps = min(float(target_fps), fps)
    duration = num_frames / fps
    delta = 1.0 / target_fps
    seconds = np.arange(delta / 2, duration, delta)
    idx = sorted({min(int(t * fps), num_frames - 1) for t in seconds}) or [0]
    if max_frames and len(idx) > max_frames:  # thin uniformly instead of dropping the end of the video
        pick = np.linspace(0, len(idx) - 1, max_frames).round().astype(int)
        idx = [idx[i] for i in pick]
    return SamplingPlan(_offset(idx, first_index), fps, duration, num_frames, "fps", first_index)


def linspace_plan(num_frames: int, fps: float, n: int, first_index: int = 0) -> SamplingPlan:
    _check(num_frames, fps)
    idx = np.linspace(0, num_frames - 1, n, dtype=int).tolist()
    return SamplingPlan(_offset(idx, first_index), fps, num_frames / fps, num_frames, "linspace", first_index)


def timestamps_plan(num_frames: int, fps: float, seconds: list[float], first_index: int = 0) -> SamplingPlan:
    _check(num_frames, fps)
    if not seconds:
        raise InputError("no timestamps given")
    idx = [min(max(int(round(t * fps)), 0), num_frames - 1) for t in seconds]
    return SamplingPlan(_offset(idx, first_index), fps, num_frames / fps, num_frames, "timestamps", first_index)


def trim(video, start: float | None, end: float | None) -> tuple[int, int]:
    """(first frame index, frame count) of the [start, end) seconds of `video`."""
    if start is None and end is None:
        return 0, video.num_frames
    s = max(0.0, float(start or 0.0))
    e = min(float(end) if end is not None else video.duration, video.duration)
    first = int(s * video.fps)
    count = min(int((e - s) * video.fps), video.num_frames - first)
    if count < 1:
        raise InputError(f"the range {s:.2f}-{e:.2f} s holds no frames of this {video.duration:.2f} s video")
    return first, count
