"""Finding, reading and writing checkpoints in the released format (config.json + safetensors)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint folder, downloading `owner/name` from the Hugging Face hub if needed."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is not a checkpoint folder (no config.json)")
        return path
    text = str(path_or_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"model not found: {text} (expected a checkpoint folder or a hub id like owner/name)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as e:  # offline, unknown repo, auth: all one line for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not download {text} from the Hugging Face hub: {reason}") from None
    return Path(local)


def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable config.json in {folder}: {e}") from None


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
        except Exception as e:
            raise CheckpointError(f"unreadable weights {file.name}: {str(e).splitlines()[0] if str(e) else e}") from None
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
        raise CheckpointError(f"could not load the tokenizer in {folder}: {str(e).splitlines()[0] if str(e) else e}") from None
    finally:
        hf_logging.set_verbosity(level)


def save_checkpoint(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                    extra_files: dict[str, Path] | None = None) -> None:
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


logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
