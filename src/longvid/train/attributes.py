"""Vision pre-training: the tower learns to see the needle task's cards before any LLM stage.

A tiny tower trained from scratch only through the LLM never learned shapes (a linear probe on its
tokens read the colour of every card but the shape of no held-out one): the loss through a random
LLM is a weak signal, and shape is entangled with colour. Real VideoChat-Flash starts from a
pre-trained UMT tower; this stage is our stand-in for that pre-training.

    data: {synthetic: {task: cards, card_ratio: 0.75, pointer_ratio: 0.5, colour_radius: 48, seed: 0}}

Each sample is a clip of `mm_local_num_frames` frames, each a haystack frame or a card painted in a
random colour far from the eight named ones (colour must not predict shape, and no needle the
model is later asked about is seen here, see `longvid.data.needles.pretraining_colour`). The clip goes
through the tower, ToMe and the projector, exactly as at inference; each frame's merged tokens are
averaged (as an LLM attending to them would) and small linear heads predict whether the frame is a
card, its shape, its instruction icon and (a regression, so that learning shapes does not wash
colours out) the shape's RGB. The heads are dropped
afterwards: checkpoints hold the released keys only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compress.tome import replay, tome_merge
from ..data.needles import ATTRIBUTES, COLOUR_TARGETS, attribute_clip, haystack
from ..errors import ConfigError
from .module import TrainingModule

IGNORE = -100
DEFAULTS: dict[str, Any] = {
    "task": "cards",
    "card_ratio": 0.75,
    "pointer_ratio": 0.5,
    "colour_radius": 48.0,
    "haystack_frames": 2048,
    "size": 64,
    "seed": 0,
}


def is_cards(synthetic: dict[str, Any] | list[dict[str, Any]] | None) -> bool:
    return isinstance(synthetic, dict) and synthetic.get("task") == "cards"


def cards_spec(synthetic: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(synthetic) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown setting data.synthetic.{unknown[0]} (known: {', '.join(sorted(DEFAULTS))})")
    spec = {**DEFAULTS, **synthetic}
    if not (0 < spec["card_ratio"] <= 1 and 0 <= spec["pointer_ratio"] <= 1 and spec["colour_radius"] >= 0):
        raise ConfigError("data.synthetic: need 0 < card_ratio <= 1, 0 <= pointer_ratio <= 1, colour_radius >= 0")
    return spec


@dataclass
class AttributeBatch:
    """Duck-types `train.data.Batch` for the engine's loop."""

    clips: torch.Tensor  # [n, T, 3, S, S] normalised pixels
    labels: torch.Tensor  # [n, T, 6] card / shape / pointer / R / G / B per frame
    skipped: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return int(self.clips.shape[0])

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE).sum())

    def model_inputs(self, device) -> dict:
        return {"clips": self.clips.to(device), "labels": self.labels.to(device)}


class AttributeModule(TrainingModule):
    """The tower + ToMe + projector with linear heads on each frame's mean merged token."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.heads = nn.Linear(model.config.llm.hidden_size, sum(ATTRIBUTES.values()) + COLOUR_TARGETS)

    def configure(self, stage) -> None:
        super().configure(stage)
        self.heads.requires_grad_(True)

    def param_groups(self, stage) -> list[dict[str, Any]]:
        groups = [g for g in super().param_groups(stage) if g["name"] != "heads"]
        lr = stage.lr("vision_tower") or stage.lr("projector")
        return groups + [{"params": list(self.heads.parameters()), "lr": lr, "name": "heads", "weight_decay": 0.0}]

    def frame_tokens(self, clips: torch.Tensor) -> torch.Tensor:
        """[n, T, hidden]: per frame, the mean of the projected ToMe tokens whose patches mostly came from it
        (zeros for a frame left with no token of its own)."""
        n, t = clips.shape[:2]
        projector = self.model.projector
        feats = self.model.vision_tower(clips)  # [n, T*P, C]
        decisions: list = []
        merged = tome_merge(feats, projector.tome.tokens_per_frame * t, projector.tome.num_heads, decisions)
        patches = feats.shape[1] // t
        frame_of_patch = torch.arange(t, device=feats.device).repeat_interleave(patches)
        onehot = F.one_hot(frame_of_patch, t).to(feats.dtype).expand(n, -1, -1)
        owner = F.one_hot(replay(decisions, onehot).argmax(-1), t).to(feats.dtype)  # [n, tokens, T]
        tokens = projector.mlp(merged)  # [n, tokens, hidden]
        return (owner.transpose(1, 2) @ tokens) / owner.sum(1)[..., None].clamp(min=1)

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the three classifications plus summed squared error of the colour."""
        logits = self.heads(self.frame_tokens(clips)).flatten(0, 1)
        labels = labels.flatten(0, 1)
        loss, first = logits.new_zeros(()), 0
        for j, size in enumerate(ATTRIBUTES.values()):
            target = labels[:, j]
            if (target != IGNORE).any():
                loss = loss + F.cross_entropy(
                    logits[:, first : first + size], target, ignore_index=IGNORE, reduction="sum"
                )
            first += size
        card = labels[:, 0] == 1
        rgb = labels[card, len(ATTRIBUTES) :].to(logits.dtype) / 255
        return loss + F.mse_loss(logits[card, first:], rgb, reduction="sum")


def attribute_batches(
    spec: dict[str, Any],
    processor,
    frames: int,
    micro: int,
    stage_seed: int,
    rank: int,
    world: int,
    start: int,
    total: int,
    accum: int,
) -> Iterator[AttributeBatch]:
    """This process's micro-batches for steps start..total-1, deterministic in (seed, step, rank, micro
    index), so a resumed run sees the same data."""
    hay = np.stack(list(haystack(int(spec["haystack_frames"]), int(spec["size"]), int(spec["seed"]) + 7)))
    for step in range(start, total):
        for j in range(accum):
            rng = np.random.default_rng([int(spec["seed"]), stage_seed, step, rank, j])
            clips, labels = zip(
                *(
                    attribute_clip(
                        frames,
                        rng,
                        hay,
                        int(spec["size"]),
                        float(spec["card_ratio"]),
                        float(spec["pointer_ratio"]),
                        float(spec["colour_radius"]),
                    )
                    for _ in range(micro)
                )
            )
            pixels = processor(list(np.concatenate(clips)))
            yield AttributeBatch(pixels.reshape(micro, frames, *pixels.shape[1:]), torch.from_numpy(np.stack(labels)))
