"""The CLIP ViT tower of Video-XL: transformers' `CLIPVisionModel`, minus what the release does not use.

Video-XL takes `hidden_states[mm_vision_select_layer]` with the CLS token dropped, before
`post_layernorm`. The architecture is CLIP ViT-L/14-336; a checkpoint may carry `parity_vision_tower`
(a `CLIPVisionConfig` dict) for a tiny tower in tests. The weights always come from the checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..errors import CheckpointError, ConfigError

# openai/clip-vit-large-patch14-336, the tower named by the release's `mm_vision_tower`
CLIP_L14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def clip_config(cfg: dict[str, Any]) -> CLIPVisionConfig:
    """The tower's config: `parity_vision_tower` when the checkpoint has one, CLIP-L/14-336 otherwise."""
    values = dict(cfg.get("parity_vision_tower") or CLIP_L14_336)
    for key in ("note", "model_type"):
        values.pop(key, None)
    vcfg = CLIPVisionConfig(**values)
    if vcfg.image_size % vcfg.patch_size:
        raise ConfigError(f"vision image_size {vcfg.image_size} is not a multiple of patch_size {vcfg.patch_size}")
    return vcfg


class ClipTower(nn.Module):
    """Pixels [F, 3, S, S] -> patch features [F, (S/P)^2, width] from one hidden layer."""

    def __init__(self, config: CLIPVisionConfig, select_layer: int = -1):
        super().__init__()
        layers = config.num_hidden_layers
        if not -(layers + 1) <= select_layer <= layers:
            raise ConfigError(f"mm_vision_select_layer={select_layer} is outside the tower's {layers} layers")
        self.select_layer = select_layer % (layers + 1)  # index into (embeddings, layer 1, ..., layer L)
        model = CLIPVisionModel(config)
        # transformers < 5 nests the transformer under `.vision_model`, 5.x flattens it (and renames keys on
        # load): holding the transformer itself as `vision_model` gives the release's key names with both
        self.vision_model = getattr(model, "vision_model", model)
        # load_state_dict(assign=True) skips non-persistent buffers, so a tower built on the meta device
        # would keep a meta `position_ids`: rebuild it next to the loaded weights.
        self.register_load_state_dict_post_hook(lambda module, _: module.rebuild_buffers())

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.vision_model.config.image_size // self.vision_model.config.patch_size

    def rebuild_buffers(self) -> None:
        emb = self.vision_model.embeddings
        device = emb.position_embedding.weight.device
        emb.position_ids = torch.arange(emb.num_positions, device=device).expand((1, -1))
        for name, buf in self.named_buffers():
            if buf.is_meta:
                raise CheckpointError(f"vision tower buffer {name} was not materialised")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        last = self.vision_model.config.num_hidden_layers
        if self.select_layer == last:  # the released setting (-1): no need to keep every layer's output
            hidden = self.vision_model(pixel_values=pixels).last_hidden_state
        else:
            hidden = self.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[self.select_layer]
        return hidden[:, 1:]
