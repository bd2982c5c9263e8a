"""Encoded videos kept for later: on disk (`longvid encode`, `ask --features`) and in the feature cache.

One safetensors file holds `visual_tokens` [N, hidden] and, in its metadata, the sampling plan
(indices, timestamps), the model id, the model family and a fingerprint of everything that turns pixels
into tokens (config, a hash of the weights' contents, dtype). `longvid encode` writes it, `longvid ask
--features` reads it back, and `FeatureCache` uses the same format as its disk cache.

`FeatureCache` keeps encoded videos in memory (LRU) and, opt-in, in a folder, keyed by the video's
content hash + the sampling plan + the model's fingerprint. It only stores: the pipeline decides when
to look up, encode and store (pipeline.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputError
from .outputs import VisualTokens
from .video.sampling import SamplingPlan

if TYPE_CHECKING:
    from .models.base import VideoLLM

FORMAT = "longvid.features/1"


def file_hash(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    """Content hash of a file (blake2b, streamed)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_key(video) -> str | None:
    """A hash of what the video *is* (array bytes, file bytes, folder files); None if unknown.

    `video` is an array, a path, or an opened `Video` (an in-memory array video is hashed by its pixels)."""
    array = getattr(video, "array", None) if not isinstance(video, np.ndarray) else video
    source = getattr(video, "source", video)
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        path = Path(source)
        if path.is_file():
            return file_hash(path)
        h = hashlib.blake2b(digest_size=16)
        for p in sorted(path.iterdir()):
            if p.is_file():
                h.update(p.name.encode() + file_hash(p).encode())
        return h.hexdigest()
    if isinstance(array, np.ndarray):
        h = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16)
        h.update(repr((array.shape, str(array.dtype))).encode())
        return h.hexdigest()
    return None


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output file that cannot be written (a folder, an unwritable place)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name such as {path / 'video.safetensors'}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {parent}: {e.strerror or e}") from None
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"cannot write to {parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"cannot overwrite {path}")
    return path


def save_features(
    path: str | os.PathLike,
    visual: VisualTokens,
    model: VideoLLM,
    source: str | None = None,
    source_hash: str | None = None,
) -> Path:
    """Write `visual` atomically to `path`."""
    path = check_output_path(path)
    meta = {
        "format": FORMAT,
        "family": model.family,
        "model": model.name,
        "fingerprint": model.fingerprint(),
        "plan": json.dumps(visual.plan.to_dict()),
        "num_frames": str(visual.num_frames),
        "num_visual_tokens": str(visual.num_tokens),
        "source": source or "",
        "source_hash": source_hash or "",
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"visual_tokens": visual.tokens.detach().contiguous().cpu()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise InputError(f"{path}: not a longvid features file ({str(e).splitlines()[0] if str(e) else e})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a longvid features file (written by `longvid encode`)")
    return meta


def load_features(path: str | os.PathLike, model: VideoLLM | None = None) -> VisualTokens:
    """Read a features file; with `model`, refuse tokens made by a different encoder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such features file")
    meta = read_metadata(path)
    if model is not None:
        if meta["family"] != model.family:
            raise InputError(f"{path} holds {meta['family']} features; the model is {model.family}")
        if meta["fingerprint"] != model.fingerprint():
            raise InputError(
                f"{path} was encoded with a different model, weights or config ({meta['model']}); re-encode it"
            )
    with safe_open(str(path), framework="pt") as f:
        tokens = f.get_tensor("visual_tokens")
    plan = SamplingPlan(**json.loads(meta["plan"]))
    if model is not None:
        tokens = tokens.to(model.device, model.dtype)
    return VisualTokens(tokens, plan)


class FeatureCache:
    """Encoded videos by (content, sampling plan, model): an in-memory LRU plus an optional folder."""

    def __init__(self, folder: str | os.PathLike | None = None, max_items: int = 8):
        self.folder = Path(folder) if folder else None
        if self.folder is not None:
            if self.folder.exists() and not self.folder.is_dir():
                raise InputError(f"--cache-dir {self.folder}: not a folder")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"--cache-dir {self.folder}: cannot create it ({e.strerror or e})") from None
            if not os.access(self.folder, os.W_OK):
                raise InputError(f"--cache-dir {self.folder}: not writable")
        self.max_items = max_items
        self._memory: OrderedDict[str, VisualTokens] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def key(self, model: VideoLLM, content: str, plan: SamplingPlan) -> str:
        """Content + plan (the frames that are read) + model fingerprint (what turns them into tokens)."""
        plan_json = json.dumps(plan.to_dict(), sort_keys=True)
        return hashlib.sha256(f"{content}|{plan_json}|{model.fingerprint()}".encode()).hexdigest()[:32]

    def get(self, key: str, model: VideoLLM) -> VisualTokens | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.hits += 1
                return self._memory[key]
        if self.folder is not None and (self.folder / f"{key}.safetensors").is_file():
            visual = load_features(self.folder / f"{key}.safetensors", model)
            self.put(key, visual, model, write=False)
            self.hits += 1
            return visual
        self.misses += 1
        return None

    def put(self, key: str, visual: VisualTokens, model: VideoLLM, write: bool = True, source: str | None = None):
        with self._lock:
            self._memory[key] = visual
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)
        if write and self.folder is not None:
            save_features(self.folder / f"{key}.safetensors", visual, model, source=source)
