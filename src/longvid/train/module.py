"""The model as training sees it: loading, what trains at which learning rate, and the loss.

`load_for_training` reads a released-format checkpoint (or a LoRA adapter folder over one) in fp32.
`TrainingModule` wraps `VideoChatFlashModel` with a forward that returns the summed next-token loss of
a micro-batch: all clips of all videos go through the tower at once, the visual tokens are scattered
into the embedded, right-padded token rows, and only supervised positions reach the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint  # noqa: F401  (the decoder and towers call torch.utils.checkpoint.checkpoint)
from safetensors.torch import load_file
from torch import nn

from ..checkpoint import read_config, read_weights, resolve
from ..errors import CheckpointError, ConfigError
from ..models import build, load_weights, release_state
from .config import LoraSpec, StageConfig
from .data import IGNORE_INDEX, VisualLayout
from .lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    NON_LORA,
    inject,
    is_lora_key,
    load_adapter_tensors,
    merge,
    read_adapter_config,
)


@dataclass
class LoadedModel:
    model: nn.Module  # VideoChatFlashModel, fp32, possibly with LoRA layers
    config: dict[str, Any]  # config.json to save beside the weights
    files_from: Path  # folder whose tokenizer / generation config files go with every checkpoint
    lora: LoraSpec | None = None
    base: str | None = None  # the base checkpoint of a LoRA adapter


def resolution_overrides(cfg: dict[str, Any], size: int) -> dict[str, Any]:
    """config.json changes that make the vision tower run at `size` x `size` pixels."""
    if isinstance(cfg.get("parity_vision_tower"), dict):  # tiny models give their tower sizes explicitly
        return {"parity_vision_tower": {**cfg["parity_vision_tower"], "image_size": size}}
    tower = str(cfg.get("mm_vision_tower", ""))
    if tower.startswith("umt") and size in (224, 448):
        return {"mm_vision_tower": "umt-hd-large" if size == 448 else "umt-large"}
    raise ConfigError(
        f"model.resolution {size} is not available for mm_vision_tower {tower!r} "
        "(UMT: 224 or 448; set the tower in model.set instead)"
    )


def build_with_weights(cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    with torch.device("meta"):
        family, _, module = build(cfg)
    if family.name != "videochat_flash":
        raise ConfigError(f"training supports the VideoChat-Flash family, not {family.name}")
    load_weights(module, tensors, torch.float32, "cpu")
    return module


def deepen(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], layers: int) -> None:
    """Grow the LLM to `layers` decoder layers in place, without changing what it computes.

    Each of the last `layers - n` layers gets a copy right after it whose attention output and MLP down
    projections are zeroed: both residual branches add nothing until training moves them (depth up-scaling
    with an identity start, so a trained model only gains capacity). Token-drop layer indices follow.
    """
    old = int(cfg["num_hidden_layers"])
    extra = layers - old
    if not 0 <= extra <= old:
        raise ConfigError(f"model.layers {layers}: an LLM of {old} layers can grow to {old}..{2 * old} layers")
    order = [(i, copy) for i in range(old) for copy in ([False, True] if i >= old - extra else [False])]
    layer: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(old)}
    for key in [k for k in tensors if k.startswith("model.layers.")]:
        index, name = key[len("model.layers.") :].split(".", 1)
        layer[int(index)][name] = tensors.pop(key)
    for j, (i, copy) in enumerate(order):
        for name, t in layer[i].items():
            zero = copy and name in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
            tensors[f"model.layers.{j}.{name}"] = torch.zeros_like(t) if zero else t.clone() if copy else t
    moved = {i: j for j, (i, copy) in enumerate(order) if not copy}
    if cfg.get("llm_compress_layer_list"):  # token dropping before layer i stays before the same layer
        cfg["llm_compress_layer_list"] = [moved.get(i, i + extra) for i in cfg["llm_compress_layer_list"]]
    cfg["num_hidden_layers"] = layers


def load_for_training(
    path: str | Path, overrides: dict[str, Any] | None = None, base: str | None = None, layers: int | None = None
) -> LoadedModel:
    """A checkpoint folder (or hub id), or a LoRA adapter folder whose base is `base` or recorded inside;
    `layers` deepens a full checkpoint's LLM (`deepen`)."""
    folder = resolve(path)
    cfg = read_config(folder)
    cfg.update(overrides or {})
    if not (folder / ADAPTER_CONFIG).is_file():
        tensors = read_weights(folder)
        if layers is not None:
            deepen(cfg, tensors, layers)
        return LoadedModel(build_with_weights(cfg, tensors), cfg, folder)
    if layers is not None:
        raise ConfigError("model.layers grows full checkpoints, not LoRA adapters (merge the adapter first)")
    spec, recorded = read_adapter_config(folder)
    base = base or recorded
    if not base:
        raise CheckpointError(f"{folder}: the adapter names no base checkpoint; pass --base")
    tensors = merged_weights(base)
    if (folder / NON_LORA).is_file():  # modules trained in full beside the adapter
        tensors.update(load_file(str(folder / NON_LORA)))
    model = build_with_weights(cfg, tensors)
    inject(model, spec)
    load_adapter_tensors(model, load_file(str(folder / ADAPTER_WEIGHTS)))
    return LoadedModel(model, cfg, folder, spec, str(base))


def merged_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Released-name weights of a checkpoint folder, or of a LoRA folder folded into its own base."""
    folder = resolve(path)
    if not (folder / ADAPTER_CONFIG).is_file():
        return read_weights(folder)
    loaded = load_for_training(folder)
    merge(loaded.model)
    return release_state(loaded.model, loaded.model.state_dict())


def module_of(name: str) -> str:
    """vision_tower | projector | llm for a VideoChatFlashModel parameter name."""
    return name.split(".", 1)[0]


class TrainingModule(nn.Module):
    """VideoChatFlashModel + the training forward (what DDP / FSDP2 wrap)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    # ---------------------------------------------------------------- setup
    def configure(self, stage: StageConfig) -> None:
        """Freeze what the stage does not train, add LoRA, switch gradient checkpointing on."""
        for name, p in self.model.named_parameters():
            module = module_of(name)
            if module == "llm" and stage.lora is not None:
                p.requires_grad_(is_lora_key(name))
            else:
                p.requires_grad_(bool(stage.lr(module)))
        if not any(p.requires_grad for p in self.parameters()):
            raise ConfigError(f"stage {stage.name}: no parameter is left to train")
        ckpt = stage.model.gradient_checkpointing
        self.model.llm.gradient_checkpointing = ckpt
        self.model.vision_tower.gradient_checkpointing = ckpt and bool(stage.lr("vision_tower"))

    def param_groups(self, stage: StageConfig) -> list[dict[str, Any]]:
        """One group per trained module (and weight-decay kind), each with its learning rate."""
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                decay = p.ndim >= 2 and stage.optim.weight_decay > 0
                groups.setdefault((module_of(name.removeprefix("model.")), decay), []).append(p)
        return [
            {
                "params": params,
                "lr": stage.lr(module),
                "name": module,
                "weight_decay": stage.optim.weight_decay if decay else 0.0,
            }
            for (module, decay), params in sorted(groups.items())
        ]

    def shard_units(self) -> list[nn.Module]:
        """Submodules FSDP2 shards on their own: the decoder layers. The towers and projector stay with
        the root, which gathers once per forward however many times a batch calls the tower."""
        return list(self.model.llm.model.layers)

    def layout(self) -> VisualLayout:
        tome = self.model.projector.tome
        return VisualLayout(
            self.model.config.vision.image_size,
            self.model.config.frames_per_clip,
            tome.tokens_per_frame,
            tome.tokens_per_image,
        )

    # ---------------------------------------------------------------- forward
    def visual_tokens(self, clips, images, order) -> torch.Tensor:
        """[n_visual, hidden] for all visual samples, in batch order."""
        out = {}
        if clips is not None:
            out["video"] = self.model.encode_clips(clips)  # [n_clips, 16 T, hidden]
        if images is not None:
            out["image"] = self.model.encode_clips(images, is_image=True)  # [n_images, 64, hidden]
        return torch.cat([out[kind][first : first + n].flatten(0, 1) for kind, first, n in order])

    def skipped_positions(self, n: int, device) -> torch.Tensor | None:
        """The official `use_pos_skipping`: in training, positions jump once, at a random row, by random
        offsets up to `pos_skipping_range`, so short samples teach the relative distances of long ones."""
        cfg = self.model.config.raw
        if not (self.training and cfg.get("use_pos_skipping")):
            return None
        span = int(cfg.get("pos_skipping_range", 4096))
        split = int(torch.randint(0, n + 1, ()))
        left = int(torch.randint(0, span + 1, ()))
        right = int(torch.randint(left, span + 1, ()))
        positions = torch.arange(n, device=device)
        positions[:split] += left
        positions[split:] += right
        return positions

    def forward(self, tokens, labels, visual_mask, clips=None, images=None, order=()) -> torch.Tensor:
        llm = self.model.llm
        embeds = llm.embed(tokens)
        if order:
            visual = self.visual_tokens(clips, images, order)
            embeds = embeds.masked_scatter(visual_mask[..., None], visual.to(embeds.dtype))
        if torch.is_grad_enabled() and not embeds.requires_grad:
            # Frozen embeddings (LoRA, frozen LLM) and no visual rows: FSDP2 would reduce the first decoder
            # layer's gradients at the end of backward on this process but in order on the others.
            embeds.requires_grad_(True)
        hidden = llm(embeds, positions=self.skipped_positions(embeds.shape[1], embeds.device)).hidden
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        loss = F.cross_entropy(llm.logits(hidden[:, :-1][keep]), targets[keep], reduction="sum")
        # Every trainable parameter takes part in every backward, even in a batch without videos or
        # images: DDP and FSDP2 expect the same gradients on every process.
        visual = [
            p for p in chain(self.model.vision_tower.parameters(), self.model.projector.parameters()) if p.requires_grad
        ]
        if visual:
            loss = loss + 0.0 * sum(p.sum() for p in visual)
        return loss


def trained_state(model: nn.Module, state: dict[str, torch.Tensor], lora: bool) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold: everything, or for LoRA the adapters plus modules trained in full."""
    if not lora:
        return state
    trained = {module_of(n) for n, p in model.named_parameters() if p.requires_grad and not is_lora_key(n)}
    return {k: v for k, v in state.items() if is_lora_key(k) or (module_of(k) in trained and module_of(k) != "llm")}


__all__ = [
    "LoadedModel",
    "TrainingModule",
    "load_for_training",
    "release_state",
    "resolution_overrides",
    "trained_state",
]
