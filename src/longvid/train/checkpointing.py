"""Checkpoints: released-format weights plus everything needed to resume exactly.

    <stage dir>/checkpoints/step-00000040/
        config.json, model.safetensors            released key names (fp32): `longvid.load` reads it
        (LoRA: adapter_config.json, adapter_model.safetensors, non_lora_trainables.safetensors)
        tokenizer.json, tokenizer_config.json, generation_config.json, ...
        trainer_state/state.json                  stage, step, counters, world size
        trainer_state/optimizer.pt                full (unsharded) optimizer state, parameter names as keys
        trainer_state/scheduler.pt
        trainer_state/rng-rank{r}.pt              torch / numpy / python RNG of each process
    <stage dir>/final/                            the weights at the end (model's torch_dtype), no trainer state

Every folder is written under a temporary name and renamed into place when complete, so a run killed
at any moment leaves only whole checkpoints. The data position is the step: the batch order is a pure
function of seed, epoch and step (see data.GlobalBatches).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ..checkpoint import WEIGHTS, save_checkpoint
from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, NON_LORA, adapter_config, adapter_tensors, is_lora_key
from .module import load_for_training, release_state

STATE_DIR = "trainer_state"
STEP_DIR = re.compile(r"^step-(\d+)$")
NOT_TOKENIZER = {"config.json", ADAPTER_CONFIG, "trainer_state.json"}


def tokenizer_files(folder: Path) -> dict[str, Path]:
    """The files that travel with every checkpoint: tokenizer, generation config, chat template."""
    out = {}
    for p in sorted(Path(folder).iterdir()):
        if (
            p.is_file()
            and p.name not in NOT_TOKENIZER
            and p.suffix in (".json", ".txt", ".model", ".jinja", ".tiktoken")
            and not p.name.endswith(".index.json")
        ):
            out[p.name] = p
    return out


def write_model_files(
    folder: Path,
    model,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    files_from: Path,
    lora=None,
    base: str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write config.json + weights (full, or LoRA adapter + modules trained in full) + tokenizer into `folder`.

    `state` holds VideoChatFlashModel parameter names (full model, or what `trained_state` kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    cast = lambda t: t.to(dtype) if dtype is not None and t.is_floating_point() else t  # noqa: E731
    cfg = dict(config)
    if dtype is not None:
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name, src in tokenizer_files(files_from).items():
        shutil.copyfile(src, folder / name)
    if lora is None:
        tensors = {k: cast(v).contiguous() for k, v in release_state(model, state).items()}
        save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
        return
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(lora, str(base)), indent=2) + "\n")
    adapters = adapter_tensors(state, model.to_release_key)
    save_file(
        {k: cast(v).contiguous() for k, v in adapters.items()}, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"}
    )
    full = {k: v for k, v in state.items() if not is_lora_key(k)}
    save_file(
        {model.to_release_key(k): cast(v).contiguous() for k, v in full.items()},
        str(folder / NON_LORA),
        metadata={"format": "pt"},
    )


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_folder(stage_dir: Path, step: int) -> Path:
    return stage_dir / "checkpoints" / f"step-{step:08d}"


def temp_folder(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """A temporary path beside `final` to write into; it becomes `final` only when the block succeeds."""
    tmp = temp_folder(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit(tmp, final)


def commit(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder into place (replacing an older one of that name)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def latest_checkpoint(stage_dir: Path) -> Path | None:
    found = []
    for p in (stage_dir / "checkpoints").glob("step-*"):
        m = STEP_DIR.match(p.name)
        if m and (p / STATE_DIR / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def prune(stage_dir: Path, keep_last: int) -> None:
    folder = stage_dir / "checkpoints"
    steps = sorted(p for p in folder.glob("step-*") if STEP_DIR.match(p.name))
    for p in steps[: max(len(steps) - max(keep_last, 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    for p in folder.glob(".step-*"):  # leftovers of a run killed while saving
        shutil.rmtree(p, ignore_errors=True)


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_DIR / "state.json").read_text())


def merge_adapter(adapter: Path, output: Path, base: str | None = None, dtype: str | None = None) -> Path:
    """`longvid merge-lora`: adapter + base -> one full checkpoint in the released format (atomic)."""
    from ..models import to_dtype
    from .lora import merge

    loaded = load_for_training(adapter, base=base)
    merge(loaded.model)
    target = to_dtype(dtype or loaded.config.get("torch_dtype") or "float32")
    tensors = {
        k: v.to(target) if v.is_floating_point() else v
        for k, v in release_state(loaded.model, loaded.model.state_dict()).items()
    }
    config = {**loaded.config, "torch_dtype": str(target).removeprefix("torch.")}
    save_checkpoint(Path(output), config, tensors, extra_files=tokenizer_files(loaded.files_from))
    return Path(output)
