"""Frame-exact random access to videos, behind one small interface.

`open_video(source)` returns a `Video` with `num_frames`, `fps`, `duration` and `frames(indices)`,
which yields RGB uint8 [H, W, 3] arrays in the order asked, one at a time (a long plan holds at most
AHEAD_BYTES of decoded frames, never the whole plan). Sources: video files of any container FFmpeg
reads (mp4, mkv, webm, avi, mov, ts, animated gif, ...) through PyAV, `.npy` arrays [T, H, W, 3], numpy
arrays, single images and folders of images.

The PyAV reader never trusts the container's frame count: it demuxes the packets once (cheap, no
decoding) to learn every frame's timestamp, then serves a frame by seeking to the keyframe before it
and decoding forward, reusing the running decoder while the next target is ahead of it and no
keyframe jump is closer; frames nothing else depends on are not decoded unless asked for. The GOPs
of a long plan are decoded in parallel on threads, one decoder each. Truncated files are cut to the
frames that really decode (with a warning); FFmpeg's I/O is time-limited so a damaged file cannot
hang the reader.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
IO_TIMEOUT_S = 20.0  # per FFmpeg open / read call
INDEX_TIMEOUT_S = 300.0  # demuxing a file's packets (a 3-hour file takes seconds)
AHEAD_BYTES = 64 << 20  # decoded frames waiting for the caller, at most (about 110 frames of 448 x 448)
RUN_QUEUE = 8  # frames of one run waiting for the caller, at most (bounds a long run)


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str = "raw"
    container: str = ""

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
        """Yield (index, frame) for strictly increasing `indices`."""

    def frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        """Frames at `indices` (any order, repeats allowed), decoded in one forward pass."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self.num_frames:
                raise InputError(f"frame {i} is outside the video ({self.num_frames} frames)")
        if all(a <= b for a, b in zip(indices, indices[1:])):  # playback order: stream, repeat in place
            counts = Counter(indices)
            for i, frame in self._frames_sorted(sorted(counts)):
                for _ in range(counts[i]):
                    yield frame
            return
        cache = dict(self._frames_sorted(sorted(set(indices))))  # arbitrary order: hold the asked frames
        for i in indices:
            yield cache[i]

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack(list(self.frames(indices)))

    def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing to release
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ArrayVideo(Video):
    def __init__(self, array: np.ndarray, fps: float, source: str = "<array>"):
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3) or 0 in array.shape:
            raise InputError(
                f"{source}: expected a uint8 array [T, H, W, 3] (RGB, or 1 channel), got shape {tuple(array.shape)}"
            )
        if array.dtype.kind not in "uif":  # complex, bool, strings, objects: no pixel meaning
            raise InputError(f"{source}: expected uint8 (or integer / float) pixels, got dtype {array.dtype}")
        if array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
                array = array * 255.0
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        self.array = array
        self.source = source
        self.warnings = []
        self.info = VideoInfo(len(array), float(fps), array.shape[2], array.shape[1], "raw", "array")

    def _frames_sorted(self, indices):
        for i in indices:
            yield i, np.ascontiguousarray(self.array[i])


class PyAVVideo(Video):
    """A video file decoded with PyAV (FFmpeg bundled in the wheel).

    Decoding uses every core: a long plan is cut into runs (the sampled frames of one GOP, decoded from
    one seek), and runs are decoded by a pool of decoders on threads (FFmpeg releases the GIL while
    demuxing, decoding and converting), each with its own file handle; frames come back in order, at
    most AHEAD_BYTES of them decoded ahead. A plan within one GOP uses one decoder with FFmpeg's threads."""

    def __init__(self, path: str, threads: int | None = None):
        self.source = path
        self.warnings = []
        self.threads = max(1, threads or decode_threads())
        self.skip_nonref = True  # turned off for good when a stream does not skip cleanly
        self._container, self._stream = self._open()
        try:
            self._pts, self._key_pts, declared = self._index()
            if not self._pts:
                raise InputError(f"{path}: contains no video frames")
            self._decoder = _Decoder(self, self._container, self._stream)
            self._check_tail(declared)
            fps = _frame_rate(self._stream, self._pts)
            if fps is None:
                fps = 25.0
                self.warnings.append(f"{path}: unknown frame rate, assuming 25 fps")
            ctx = self._stream.codec_context
            self.info = VideoInfo(
                len(self._pts), fps, ctx.width, ctx.height, ctx.name, _container_name(self._container.format.name, path)
            )
        except BaseException:
            self._container.close()
            raise
        self._pool: list[_Decoder] = []  # decoders of the parallel path, opened on first use

    def _open(self, frame_threads: bool = True):
        import av

        try:
            container = av.open(self.source, timeout=(IO_TIMEOUT_S, IO_TIMEOUT_S))
        except Exception as e:
            raise InputError(f"{self.source}: not a readable video ({_first_line(e)})") from None
        if not container.streams.video:
            container.close()
            raise InputError(f"{self.source}: has no video stream")
        stream = container.streams.video[0]
        # FFmpeg's frame threads (codecs that have them) for the one-decoder path; slice threads only
        # when several decoders already share the cores
        stream.thread_type = "AUTO" if frame_threads and self.threads > 1 else "SLICE"
        stream.thread_count = self.threads if frame_threads else 1
        return container, stream

    # ---------------------------------------------------------------- indexing
    def _index(self) -> tuple[list[int], list[int], int]:
        """Presentation timestamps of every frame and of the keyframes, from the packets alone."""
        pts, keys = [], []
        deadline = time.monotonic() + INDEX_TIMEOUT_S
        self.damaged = False
        try:
            for packet in self._container.demux(self._stream):
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None or packet.size == 0:
                    continue
                pts.append(t)
                if packet.is_keyframe:
                    keys.append(t)
                if time.monotonic() > deadline:
                    raise InputError(f"{self.source}: indexing took longer than {INDEX_TIMEOUT_S:.0f} s")
        except InputError:
            raise
        except Exception:  # a damaged or truncated tail: keep what was indexed
            self.damaged = True
        self.damaged = self.damaged or _cut_mid_packet(self._container.format.name, self.source)
        pts = sorted(set(pts))
        keys = sorted(set(keys)) or pts[:1]
        return pts, keys, self._declared_frames(pts)

    def _declared_frames(self, pts: list[int]) -> int:
        """What the header claims: a frame count, or the declared duration times the frame rate."""
        if self._stream.frames:
            return int(self._stream.frames)
        duration = self._container.duration  # microseconds, from the header (mkv, webm, ...)
        fps = _frame_rate(self._stream, pts)
        return int(duration / 1e6 * fps) if duration and fps else 0

    def _check_tail(self, declared: int) -> None:
        """If the file looks cut short, keep only the frames that really decode, and say so."""
        if declared > max(os.path.getsize(self.source), 1) and declared > 1000 * len(self._pts):
            raise InputError(
                f"{self.source}: the header declares {declared} frames but the file holds "
                f"{len(self._pts)}; the file is corrupt"
            )
        if not self.damaged and declared <= len(self._pts) * 1.02 + 2:
            return
        usable = 0
        for key in reversed(self._key_pts[-4:]):  # the last GOPs; earlier ones are assumed fine
            decoded = [f.pts for f in self._decoder.decode_from(key) if f.pts is not None and f.pts >= key]
            if decoded:
                usable = bisect_right(self._pts, max(decoded))
                break
        if usable == 0:
            usable = len(self._pts) if not self._key_pts else bisect_right(self._pts, self._key_pts[0])
        total = max(declared, len(self._pts))
        if usable < len(self._pts):
            self._pts = self._pts[:usable]
            self._key_pts = [k for k in self._key_pts if k <= self._pts[-1]] or self._pts[:1]
        if usable < total or self.damaged:
            self.warnings.append(f"{self.source}: file is truncated or damaged; {usable} of {total} frames are usable")
        self._decoder.reset()

    # ---------------------------------------------------------------- decoding
    def key_before(self, pts: int) -> int:
        return self._key_pts[max(bisect_right(self._key_pts, pts) - 1, 0)]

    def runs(self, indices: list[int]) -> list[list[int]]:
        """Split sorted `indices` into runs that one forward decode from one keyframe serves (one GOP each)."""
        runs: list[list[int]] = []
        for i in indices:
            if runs and self.key_before(self._pts[i]) <= self._pts[runs[-1][-1]]:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def _frames_sorted(self, indices):
        runs = self.runs(indices)
        if self.threads < 2 or len(runs) < 2:
            yield from self._decoder.frames(indices)
        else:
            yield from self._frames_parallel(runs)

    def _frames_parallel(self, runs: list[list[int]]) -> Iterator[tuple[int, np.ndarray]]:
        """Runs decoded by `self.threads` decoders at once, yielded in plan order.

        Runs are handed out in order while the frames asked for but not yet yielded fit in
        AHEAD_BYTES (so decoding runs ahead while the caller encodes, in bounded memory); each run's
        frames pass through a queue of RUN_QUEUE, which bounds a long run too."""
        workers = min(self.threads, len(runs))
        while len(self._pool) < workers:
            container, stream = self._open(frame_threads=False)
            self._pool.append(_Decoder(self, container, stream))
        budget = max(2, AHEAD_BYTES // max(1, 3 * self.info.width * self.info.height))  # frames
        tasks: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def put(out: queue.Queue, item) -> bool:
            """Hand `item` to the consumer; False once it has stopped listening."""
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work(decoder: _Decoder) -> None:
            while (task := tasks.get()) is not None:
                run, out = task
                if stop.is_set():
                    continue
                try:
                    for item in decoder.frames(run):
                        if not put(out, item):
                            break
                    else:
                        put(out, _DONE)
                except BaseException as e:  # raised by the consumer, in plan order
                    decoder.reset()
                    put(out, e)

        threads = [
            threading.Thread(target=work, args=(d,), daemon=True, name="longvid-decode") for d in self._pool[:workers]
        ]
        for thread in threads:
            thread.start()
        todo = iter(runs)
        upcoming = next(todo, None)
        window: deque = deque()  # output queues of the runs handed out, in plan order
        ahead = 0  # frames handed out and not yet yielded

        def hand_out() -> None:
            nonlocal upcoming, ahead
            # the oldest run is taken first (FIFO), so the head of `window` is always being decoded
            while upcoming is not None and (not window or ahead + len(upcoming) <= budget):
                out: queue.Queue = queue.Queue(maxsize=RUN_QUEUE)
                tasks.put((upcoming, out))
                window.append(out)
                ahead += len(upcoming)
                upcoming = next(todo, None)

        try:
            hand_out()
            while window:
                while (item := window[0].get()) is not _DONE:
                    if isinstance(item, BaseException):
                        raise item
                    ahead -= 1
                    yield item
                    hand_out()
                window.popleft()
                hand_out()
        finally:
            stop.set()
            for _ in threads:
                tasks.put(None)
            for thread in threads:
                thread.join()

    def close(self) -> None:
        self._decoder.reset()
        self._container.close()
        for decoder in self._pool:
            decoder.container.close()
        self._pool = []


_DONE = object()


class _Decoder:
    """One demuxer + decoder over a file: serves sorted frame indices by seeking to the keyframe before
    each and decoding forward, reusing the running decoder while the next target is in the same GOP."""

    def __init__(self, video: PyAVVideo, container, stream):
        from av.video.reformatter import VideoReformatter

        # a weak reference: no cycle, so a dropped video closes its files at once (not at the next GC)
        self.video = weakref.proxy(video)
        self.container, self.stream = container, stream
        self.bad_packets = 0
        self._packets: Iterator | None = None
        self._last_pts: int | None = None
        self._skipping = False  # whether the running decode skips non-reference frames
        self._wanted: set[int] = set()  # timestamps of the frames asked for (never skipped)
        self._rgb = VideoReformatter()  # one conversion context for all frames (PyAV makes one per frame)

    def reset(self) -> None:
        self._packets, self._last_pts = None, None

    def frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        video = self.video
        self._wanted = {video._pts[i] for i in indices}
        for i in indices:
            target = video._pts[i]
            skip = video.skip_nonref
            frame = self._decode_towards(target, skip)
            if frame is not None and frame.pts != target and skip:
                video.skip_nonref = False  # this stream does not skip cleanly: decode everything from now on
                self._packets = None
                frame = self._decode_towards(target, False)
            if frame is None:
                raise InputError(f"{video.source}: frame {i} could not be decoded")
            if frame.pts != target:
                video.warnings.append(f"{video.source}: frame {i} is damaged; used the next decodable frame")
            yield i, self._rgb.reformat(frame, format="rgb24").to_ndarray()

    def _decode_towards(self, target: int, skip_nonref: bool):
        """The first decoded frame at or after `target`, reusing the running decoder when that is shorter."""
        key = self.video.key_before(target)
        if (
            self._packets is None
            or self._last_pts is None
            or self._last_pts >= target
            or self._last_pts < key
            or self._skipping != skip_nonref
        ):
            self._packets = self.decode_from(key, skip_nonref)
            self._skipping = skip_nonref
        for candidate in self._packets:
            if candidate.pts is None:
                continue
            self._last_pts = candidate.pts
            if candidate.pts >= target:
                return candidate
        self._packets = None
        return None

    def _seek(self, key_pts: int) -> Iterator:
        """Packets from the keyframe at `key_pts` (or an earlier one) on.

        Some demuxers (MPEG-TS) seek by byte position and can land past the keyframe asked for: then
        seek to the keyframe before it, and finally to the start of the file."""
        import av

        keys = self.video._key_pts
        earlier = keys[: bisect_right(keys, key_pts) - 1][::-1][:3]
        for target in [key_pts, *earlier, None]:
            try:
                if target is None:
                    self.container.seek(0, backward=True, any_frame=False)
                else:
                    self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            except av.error.FFmpegError as e:
                raise InputError(f"{self.video.source}: seeking failed ({_first_line(e)})") from None
            packets = self.container.demux(self.stream)
            try:
                first = next(packets)
            except (StopIteration, av.error.FFmpegError):
                continue
            t = first.pts if first.pts is not None else first.dts
            if t is None or t <= key_pts or target is None:
                return itertools.chain([first], packets)
        return iter(())

    def decode_from(self, key_pts: int, skip_nonref: bool = False) -> Iterator:
        """Decoded frames from the keyframe at `key_pts` on, skipping packets FFmpeg cannot decode.

        With `skip_nonref`, frames no other frame depends on (most B-frames) are not decoded, except
        the packets of frames asked for (`self._wanted`): exact, and much less work on long GOPs."""
        import av

        codec = self.stream.codec_context
        packets = self._seek(key_pts)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                packet = None  # end of file: flush the frames the decoder still holds (B-frame delay)
            except av.error.FFmpegError:
                packet = None  # damaged data: flush what the decoder still holds and stop
            wanted = packet is None or not skip_nonref or packet.pts in self._wanted
            codec.skip_frame = "DEFAULT" if wanted else "NONREF"
            try:
                yield from codec.decode(packet)
            except av.error.FFmpegError:
                self.bad_packets += 1
            if packet is None:
                return


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
        self.info = VideoInfo(len(self.files), float(fps or 1.0), first.shape[1], first.shape[0], "images", "folder")
        self._shape = first.shape

    def _frames_sorted(self, indices):
        for i in indices:
            image = _load_image(self.files[i])
            if image.shape != self._shape:  # frames of one video must share a size
                from PIL import Image

                image = np.asarray(Image.fromarray(image).resize((self._shape[1], self._shape[0]), Image.BICUBIC))
            yield i, image


def open_video(source, fps: float | None = None, threads: int | None = None) -> Video:
    """Open a path (video, image, folder of images, .npy) or an array as a `Video`.

    `fps` is the frame rate of sources that have none of their own (arrays, images, folders); for
    video files it overrides the container's rate. `threads`: decoding threads (default: every core)."""
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
        return ArrayVideo(array, fps or 1.0, str(path))
    if suffix in IMAGE_EXTS:
        video = ArrayVideo(_load_image(path)[None], fps or 1.0, str(path))
        video.is_image = True
        return video
    video = PyAVVideo(str(path), threads)
    if fps:
        video.info.fps = float(fps)
    return video


def decode_threads() -> int:
    """Decoding threads: the cores this process may use (LONGVID_DECODE_THREADS overrides), at most 16."""
    env = os.environ.get("LONGVID_DECODE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), 64)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


def _cut_mid_packet(format_name: str, path: str) -> bool:
    """An MPEG-TS file whose size is not a whole number of transport packets was cut short (its
    header declares nothing else that would tell)."""
    if "mpegts" not in format_name.split(","):
        return False
    size = os.path.getsize(path)
    return all(size % n for n in (188, 192, 204))


def _container_name(names: str, path: str) -> str:
    """FFmpeg names demuxers by family ("mov,mp4,m4a,..."): show the member matching the file's suffix."""
    options = names.split(",")
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in options else options[0]


def _frame_rate(stream, pts: list[int]) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) <= 1000:
            return float(rate)
    if len(pts) > 1 and stream.time_base:  # from the timestamps themselves
        span = (pts[-1] - pts[0]) * float(stream.time_base)
        if span > 0:
            return (len(pts) - 1) / span
    return None


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise InputError(f"{path}: not a readable image ({_first_line(e)})") from None


def _natural_key(p: Path):
    nums = re.findall(r"\d+", p.stem)
    return (int(nums[-1]) if nums else -1, p.name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
