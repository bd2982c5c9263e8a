"""Encoded videos on disk: the compressed visual tokens plus how they were made.

One safetensors file holds `visual_tokens` [N, hidden] and, in its metadata, the sampling plan
(indices, timestamps), the model id, the model family and a fingerprint of everything that turns pixels
into tokens. `longvid encode` writes it, `longvid ask --features` reads it back, and chat sessions use
the same format as their disk cache, keyed by the video's content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputError
from .video import SamplingPlan

FORMAT = "longvid.features/1"


def file_hash(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    """Content hash of a file (blake2b, streamed)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_features(path: str | os.PathLike, visual, model, source: str | None = None,
                  source_hash: str | None = None) -> Path:
    """Write `visual` (a VisualTokens) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT, "family": model.family, "model": model.name, "fingerprint": model.fingerprint(),
        "plan": json.dumps(visual.plan.to_dict()), "num_frames": str(visual.num_frames),
        "num_visual_tokens": str(visual.tokens.shape[0]), "source": source or "", "source_hash": source_hash or "",
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


def load_features(path: str | os.PathLike, model=None):
    """Read a features file; with `model`, refuse tokens made by a different encoder."""
    from .models.base import VisualTokens

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such features file")
    meta = read_metadata(path)
    if model is not None:
        if meta["family"] != model.family:
            raise InputError(f"{path} holds {meta['family']} features; the model is {model.family}")
        if meta["fingerprint"] != model.fingerprint():
            raise InputError(f"{path} was encoded with a different model or config ({meta['model']}); re-encode it")
    with safe_open(str(path), framework="pt") as f:
        tokens = f.get_tensor("visual_tokens")
    plan = SamplingPlan(**json.loads(meta["plan"]))
    if model is not None:
        tokens = tokens.to(model.device, model.dtype)
    return VisualTokens(tokens, plan)
