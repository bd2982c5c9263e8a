"""Finding, reading and writing checkpoints in the released format (config.json + safetensors)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
QUANTIZED = {
    torch.int8,
    torch.uint8,
    getattr(torch, "float8_e4m3fn", torch.int8),
    getattr(torch, "float8_e5m2", torch.int8),
}


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)*")
# What a checkpoint folder on the hub may contribute: config, tokenizer and safetensors weights. Never
# zips, pickles (*.bin, *.pth, *.pt, rng states) or training leftovers, which releases keep beside them.
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    WEIGHTS_INDEX,
    "*.safetensors",
]


def parse_hub_id(text: str) -> tuple[str, str | None, str | None]:
    """`owner/name[/sub/folder][@revision]` -> (repo id, subfolder or None, revision or None)."""
    text, at, revision = text.partition("@")
    if not HUB_ID.fullmatch(text) or (at and not revision):
        raise CheckpointError(
            f"model not found: {text + at + revision} (expected a checkpoint folder or a hub id "
            "like owner/name, owner/name/subfolder or owner/name@revision)"
        )
    owner, name, *sub = text.split("/")
    if any(part in (".", "..") for part in sub):
        raise CheckpointError(f"{text}: a hub subfolder may not contain . or ..")
    return f"{owner}/{name}", "/".join(sub) or None, revision or None


def resolve(path_or_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint folder, downloading a hub id (`owner/name`, `owner/name/subfolder`, an optional
    `@revision` or `revision`) from the Hugging Face hub if needed: only the folder's config, tokenizer
    and safetensors files."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is not a checkpoint folder (no config.json)")
        return path
    text = str(path_or_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") < 1:
        raise CheckpointError(f"model not found: {text} (expected a checkpoint folder or a hub id like owner/name)")
    repo, sub, at_revision = parse_hub_id(text)
    revision = revision or at_revision
    prefix = f"{sub}/" if sub else ""
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo, revision=revision, allow_patterns=[prefix + f for f in HUB_FILES], ignore_patterns=[prefix + "*/*"]
        )  # nothing from deeper folders
    except Exception as e:  # offline, unknown repo or revision, auth: all one line for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not download {text} from the Hugging Face hub: {reason}") from None
    folder = Path(local) / sub if sub else Path(local)
    if not (folder / "config.json").is_file():
        where = f"folder {sub!r} of {repo}" if sub else repo
        raise CheckpointError(
            f"the hub's {where} holds no config.json (is the checkpoint in a subfolder? "
            "give it as owner/name/subfolder)"
        )
    return folder


# config.json keys that must be numbers (a string or list there would fail deep inside the model)
NUMBER_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "mm_hidden_size",
    "mm_local_num_frames",
    "mm_pos_num_frames",
    "tokenizer_model_max_length",
    "bos_token_id",
)


def read_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable config.json in {folder}: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"config.json in {folder} is a JSON {type(cfg).__name__}, not an object")
    for key in NUMBER_KEYS:
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(f"config.json in {folder}: {key} must be a number, got {value!r}")
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"config.json in {folder}: architectures must be a list of names, got {archs!r}")
    return cfg


def weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS_INDEX).is_file():
        try:
            index = json.loads((folder / WEIGHTS_INDEX).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"unreadable {WEIGHTS_INDEX}: {e}") from None
        files = sorted(set(index.get("weight_map", {}).values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{folder} lacks shard(s) {', '.join(missing)} listed in {WEIGHTS_INDEX}")
        return [folder / f for f in files]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    raise CheckpointError(f"{folder} holds no {WEIGHTS} or {WEIGHTS_INDEX}")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint, under their stored names."""
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
                    if tensors[key].dtype in QUANTIZED:
                        raise CheckpointError(
                            f"{file.name}: weight {key} is {str(tensors[key].dtype)[6:]}; "
                            "quantized checkpoints are not supported (use float weights)"
                        )
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"unreadable weights {file.name}: {str(e).splitlines()[0] if str(e) else e}"
            ) from None
    return tensors


def load_tokenizer(folder: Path):
    """The checkpoint's tokenizer, without transformers' chatter about unknown model types."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise CheckpointError(
            f"could not load the tokenizer in {folder}: {str(e).splitlines()[0] if str(e) else e}"
        ) from None
    finally:
        hf_logging.set_verbosity(level)


def save_checkpoint(
    folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], extra_files: dict[str, Path] | None = None
) -> None:
    """Write config.json + model.safetensors atomically: a temp folder renamed into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(contiguous, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------ weight digests

_DIGESTS: dict[str, str] = {}
_DIGEST_LOCK = threading.Lock()


def _digest_store() -> Path:
    root = (
        os.environ.get("LONGVID_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "longvid"
    )
    return Path(root) / "weight-digests.json"


def weights_digest(folder: Path) -> str:
    """A content hash of a checkpoint's weight files, so that two checkpoints of the same shape (a fine-tune,
    another seed) never share cached visual tokens.

    Hashing reads every byte once (seconds per GB), so the result is remembered in memory and in a small
    json (`~/.cache/longvid/weight-digests.json`) under each file's path, size and modification time; a
    rewritten file gets a new entry. The json is a convenience: when it cannot be written, nothing fails."""
    files = weight_files(Path(folder))
    stamps = []
    for f in files:
        st = f.stat()
        stamps.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    key = hashlib.sha256("\n".join(stamps).encode()).hexdigest()
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
        store = _digest_store()
        try:
            known = json.loads(store.read_text())
        except (OSError, ValueError):
            known = {}
        if not isinstance(known, dict):
            known = {}
        digest = known.get(key)
        if not isinstance(digest, str):
            h = hashlib.blake2b(digest_size=16)
            for f in files:
                with open(f, "rb") as fh:
                    while block := fh.read(8 << 20):
                        h.update(block)
            digest = h.hexdigest()
            known[key] = digest
            try:
                store.parent.mkdir(parents=True, exist_ok=True)
                tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(known))
                os.replace(tmp, store)
            except OSError:
                pass
        _DIGESTS[key] = digest
        return digest


logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
