"""Video encoders, chosen by the released `mm_vision_tower` name."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .internvideo2 import InternVideo2Config, InternVideo2VisionTower
from .processor import ClipProcessor, SquashProcessor
from .umt import UMTConfig, UMTVisionTower

# name test -> (config reader, module); add a tower by adding an entry
TOWERS = {
    "umt": (lambda name: name.startswith("umt"), UMTConfig, UMTVisionTower),
    "internvideo2": (lambda name: name.startswith("internvideo2"), InternVideo2Config, InternVideo2VisionTower),
}


def tower_kind(name: str) -> str:
    for kind, (matches, _, _) in TOWERS.items():
        if matches(name.lower()):
            return kind
    raise ConfigError(f"unknown vision tower {name!r} (known: umt-large, umt-hd-large, internvideo2)")


def vision_config(cfg: dict[str, Any]):
    return TOWERS[tower_kind(str(cfg.get("mm_vision_tower", "")))][1].from_release(cfg)


def build_vision_tower(vcfg):
    for _, config_cls, module in TOWERS.values():
        if isinstance(vcfg, config_cls):
            return module(vcfg)
    raise ConfigError(f"no vision tower for {type(vcfg).__name__}")


__all__ = [
    "ClipProcessor",
    "SquashProcessor",
    "UMTConfig",
    "UMTVisionTower",
    "InternVideo2Config",
    "InternVideo2VisionTower",
    "tower_kind",
    "vision_config",
    "build_vision_tower",
]
