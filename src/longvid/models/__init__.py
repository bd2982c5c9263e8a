"""Model families and `load()`: pick the family from the released config.json, build it, load weights.

Weights are read straight from the release's safetensors (single file or sharded). Modules are built on
the meta device and the loaded tensors assigned in place, so a 7B checkpoint is held in memory once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_tokenizer, read_config, read_weights, resolve
from ..errors import CheckpointError, ConfigError
from ..generation import GenerationConfig
from ..options import check_device, check_overrides
from ..outputs import Answer, VisualTokens
from .base import VideoLLM, release_state
from .video_xl import VideoXL, VideoXLConfig, VideoXLModel
from .videochat_flash import VideoChatFlash, VideoChatFlashConfig, VideoChatFlashModel

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class Family:
    name: str
    matches: Callable[[dict[str, Any]], bool]
    config: type
    module: type
    wrapper: type


def _is_videochat_flash(cfg: dict[str, Any]) -> bool:
    tower = str(cfg.get("mm_vision_tower", "")).lower()
    return cfg.get("model_type") == "videochat_flash_qwen" or tower.startswith(("umt", "internvideo2"))


def _is_video_xl(cfg: dict[str, Any]) -> bool:
    llava_qwen = cfg.get("model_type") == "llava_qwen" or "LlavaQwenForCausalLM" in (cfg.get("architectures") or [])
    return llava_qwen and any(key.startswith("beacon_") for key in cfg)  # LLaVA-Qwen with visual summary tokens


FAMILIES: list[Family] = [
    Family("videochat_flash", _is_videochat_flash, VideoChatFlashConfig, VideoChatFlashModel, VideoChatFlash),
    Family("video_xl", _is_video_xl, VideoXLConfig, VideoXLModel, VideoXL),
]


def register(family: Family) -> None:
    FAMILIES.insert(0, family)


def family_of(cfg: dict[str, Any]) -> Family:
    for fam in FAMILIES:
        if fam.matches(cfg):
            return fam
    raise ConfigError(
        f"unsupported model (model_type={cfg.get('model_type')!r}, mm_vision_tower={cfg.get('mm_vision_tower')!r})"
    )


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} (use float32 or bfloat16)")
    return DTYPES[dtype]


def build(cfg: dict[str, Any]):
    """(family, config, randomly initialised module) for a config dict."""
    fam = family_of(cfg)
    try:
        config = fam.config.from_dict(cfg)
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a value of the wrong type or shape
        raise ConfigError(
            f"config.json does not describe a valid {fam.name} model: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else e}"
        ) from None
    return fam, config, fam.module(config)


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype, device) -> None:
    """Load release-named `tensors` into `module` (built on any device), strictly, in one line on mismatch."""
    mapped = {module.from_release_key(k): v for k, v in tensors.items()}
    expected = module.state_dict()
    llm = getattr(module, "llm", None)
    if llm is not None and llm.config.tie_word_embeddings and "llm.lm_head.weight" not in mapped:
        mapped["llm.lm_head.weight"] = mapped.get("llm.model.embed_tokens.weight")
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {module.to_release_key(missing[0])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {module.to_release_key(unexpected[0])})")
        raise CheckpointError("weights do not match config.json: " + ", ".join(parts))
    for key, value in expected.items():
        if tuple(mapped[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"weight {module.to_release_key(key)} has shape {tuple(mapped[key].shape)}, "
                f"config.json implies {tuple(value.shape)}"
            )
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in mapped.items()}
    module.load_state_dict(state, strict=True, assign=True)
    if llm is not None and llm.config.tie_word_embeddings:
        llm.lm_head.weight = llm.model.embed_tokens.weight


class _Reads(dict):
    """A config dict that remembers which keys the config readers looked up (to tell a typo from a setting)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def load(
    path_or_hub_id: str | os.PathLike,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    overrides: dict[str, Any] | None = None,
    weights: bool = True,
    revision: str | None = None,
) -> VideoLLM:
    """Load a released checkpoint (local folder or hub id) as a ready-to-ask model object.

    `weights=False` builds it on the meta device without reading weights: enough to plan frames and
    token / memory budgets (`longvid info`), not to run it."""
    check_device(str(device))
    torch_dtype = to_dtype(dtype)
    folder = resolve(path_or_hub_id, revision)
    released = read_config(folder)
    overrides = overrides or {}
    check_overrides(released, overrides)
    cfg = _Reads({**released, **overrides})
    with torch.device("meta"):
        try:
            fam, config, module = build(cfg)
        except (ValueError, TypeError, RuntimeError) as e:
            if not overrides:
                raise
            # a --set value the readers accepted but the modules cannot be built with (e.g. a head count)
            raise ConfigError(f"--set values give an unbuildable model: {str(e).splitlines()[0]}") from None
    check_overrides(released, overrides, known=cfg.read)
    if weights:
        load_weights(module, read_weights(folder), torch_dtype, device)
    else:
        module.to(torch_dtype)
    tokenizer = load_tokenizer(folder)
    generation = GenerationConfig.from_file(Path(folder) / "generation_config.json")
    return fam.wrapper(module, tokenizer, generation, name=str(path_or_hub_id), folder=folder)


__all__ = [
    "Answer",
    "Family",
    "FAMILIES",
    "VideoLLM",
    "VisualTokens",
    "build",
    "family_of",
    "load",
    "load_weights",
    "register",
    "release_state",
    "to_dtype",
]
