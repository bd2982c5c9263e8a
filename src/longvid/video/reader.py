"""Frame-exact random access to videos, behind one small interface.

`open_video(source)` returns a `Video` with `num_frames`, `fps`, `duration` and `frames(indices)`,
which yields RGB uint8 [H, W, 3] arrays in the order asked. Sources: video files (PyAV), `.npy`
arrays [T, H, W, 3], numpy arrays, single images and folders of images.

The PyAV reader never trusts the container's frame count: it demuxes the packets once (cheap, no
decoding) to learn every frame's timestamp, then serves a frame by seeking to the keyframe before it
and decoding forward, reusing the decoder while the next target is ahead in the same stretch.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str = "raw"

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


class Video(ABC):
    """A sequence of RGB frames with a frame rate."""

    info: VideoInfo
    source: str = "<array>"
    warnings: list[str]
    is_image: bool = False  # a single still image (models treat it as an image, not a 1-frame video)

    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    @property
    def fps(self) -> float:
        return self.info.fps

    @property
    def duration(self) -> float:
        return self.info.duration

    @abstractmethod
    def _frames_sorted(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index, frame) for sorted unique `indices`."""

    def frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        """Frames at `indices` (any order, repeats allowed), decoded in one forward pass."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self.num_frames:
                raise InputError(f"frame {i} is outside the video ({self.num_frames} frames)")
        wanted = sorted(set(indices))
        if indices == wanted:  # the common case: stream without holding frames
            yield from (f for _, f in self._frames_sorted(wanted))
            return
        cache = dict(self._frames_sorted(wanted))
        for i in indices:
            yield cache[i]

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack(list(self.frames(indices)))

    def close(self) -> None:
        pass


class ArrayVideo(Video):
    def __init__(self, array: np.ndarray, fps: float, source: str = "<array>"):
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise InputError(f"{source}: expected a uint8 array [T, H, W, 3], got shape {tuple(array.shape)}")
        if array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
                array = array * 255.0
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        self.array = array[..., :3]
        self.source = source
        self.warnings = []
        self.info = VideoInfo(len(array), float(fps), array.shape[2], array.shape[1])

    def _frames_sorted(self, indices):
        for i in indices:
            yield i, self.array[i]


class PyAVVideo(Video):
    """A video file decoded with PyAV (FFmpeg bundled in the wheel)."""

    def __init__(self, path: str, timeout: float = 60.0):
        import av

        self.source = path
        self.timeout = timeout
        self.warnings = []
        try:
            self._container = av.open(path)
        except Exception as e:
            raise InputError(f"{path}: not a readable video ({_first_line(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"{path}: has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._pts, self._key_pts = self._index()
        if not self._pts:
            self._container.close()
            raise InputError(f"{path}: contains no decodable video frames")
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        fps = float(rate) if rate else 0.0
        if fps <= 0 or fps > 1000:
            fps = 25.0
            self.warnings.append(f"{path}: unknown frame rate, assuming 25 fps")
        ctx = self._stream.codec_context
        self.info = VideoInfo(len(self._pts), fps, ctx.width, ctx.height, self._stream.codec_context.name)
        self._decoder = None
        self._last_pts = None

    def _index(self) -> tuple[list[int], list[int]]:
        """Presentation timestamps of every frame and of the keyframes, from the packets alone."""
        pts, keys = [], []
        try:
            for packet in self._container.demux(self._stream):
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None or packet.size == 0:
                    continue
                pts.append(t)
                if packet.is_keyframe:
                    keys.append(t)
        except Exception as e:  # truncated / corrupt tail: keep what was indexed
            self.warnings.append(f"{self.source}: stopped indexing at a damaged packet ({_first_line(e)})")
        pts.sort()
        keys.sort()
        return pts, keys or pts[:1]

    def _seek(self, pts: int) -> None:
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._decoder = self._container.decode(self._stream)
        self._last_pts = None

    def _frames_sorted(self, indices):
        import av

        targets = [self._pts[i] for i in indices]
        pos = 0
        while pos < len(targets):
            target = targets[pos]
            key = self._key_pts[max(bisect_right(self._key_pts, target) - 1, 0)]
            # reuse the running decoder if the target lies ahead of it and no keyframe jump is cheaper
            if self._decoder is None or self._last_pts is None or self._last_pts >= target or self._last_pts < key:
                self._seek(key)
            try:
                frame = self._next_frame()
                while frame is not None and frame.pts is not None and frame.pts < target:
                    frame = self._next_frame()
            except av.error.FFmpegError as e:
                raise InputError(f"{self.source}: decoding failed at frame {indices[pos]} ({_first_line(e)})") from None
            if frame is None:  # ran out (truncated file): give up on the rest
                raise InputError(f"{self.source}: frame {indices[pos]} could not be decoded")
            self._last_pts = frame.pts
            image = frame.to_ndarray(format="rgb24")
            # every target with this pts (there is one per index) is served by this frame
            while pos < len(targets) and targets[pos] <= (frame.pts if frame.pts is not None else target):
                yield indices[pos], image
                pos += 1

    def _next_frame(self):
        try:
            return next(self._decoder)
        except StopIteration:
            return None

    def close(self) -> None:
        self._container.close()


class ImageFolderVideo(Video):
    """A folder of images (sorted by the number in their name, then by name), 1 fps unless told."""

    def __init__(self, folder: Path, fps: float | None = None):
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS]
        if not files:
            raise InputError(f"{folder}: folder holds no images")
        self.files = sorted(files, key=_natural_key)
        self.source = str(folder)
        self.warnings = []
        first = _load_image(self.files[0])
        self.info = VideoInfo(len(self.files), float(fps or 1.0), first.shape[1], first.shape[0], "images")

    def _frames_sorted(self, indices):
        for i in indices:
            yield i, _load_image(self.files[i])


def open_video(source, fps: float | None = None) -> Video:
    """Open a path (video, image, folder of images, .npy) or an array as a `Video`."""
    if isinstance(source, Video):
        return source
    if isinstance(source, np.ndarray):
        video = ArrayVideo(source, fps or 1.0)
        video.is_image = source.ndim == 3
        return video
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return ImageFolderVideo(path, fps)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise InputError(f"{path}: not a readable .npy array ({_first_line(e)})") from None
        return ArrayVideo(np.asarray(array), fps or 1.0, str(path))
    if suffix in IMAGE_EXTS:
        video = ArrayVideo(_load_image(path)[None], fps or 1.0, str(path))
        video.is_image = True
        return video
    return PyAVVideo(str(path))


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise InputError(f"{path}: not a readable image ({_first_line(e)})") from None


def _natural_key(p: Path):
    import re

    nums = re.findall(r"\d+", p.stem)
    return (int(nums[-1]) if nums else -1, p.name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

