"""`VideoChatFlashQwenForCausalLM` for vLLM: longvid's video side, vLLM's Qwen2.

    frames (uint8)  -> SquashProcessor (the processor below, on vLLM's input side)
      -> clips of `mm_local_num_frames` -> longvid's UMT / InternVideo2 tower -> clip ToMe -> MLP
      -> rows spliced where the prompt's `<image>` was -> vLLM's Qwen2 (paged KV cache, batching)

The weights load from the released safetensors under their released names (`hf_to_vllm_mapper`).
The prompt may be text with the official `<image>` marker or token ids holding one placeholder token
(`PLACEHOLDER`): either way the text around the marker is tokenised piece by piece, as the official
`tokenizer_image_token` (longvid.prompt.tokenize_with_image) does, and the marker becomes one row per
visual token. Precomputed visual tokens (`VisualTokens.tokens`, [N, hidden]) skip the tower
(`multi_modal_data={"video": [tokens]}` with `enable_mm_embeds=True`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import BaseDummyOptions
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import EmbeddingItems, MultiModalDataItems, ProcessorBatchItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from ..errors import ConfigError
from ..models.videochat_flash import ToMeMlpProjector, VideoChatFlashConfig
from ..prompt import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, tokenize_with_image
from ..vision import SquashProcessor, build_vision_tower

# The token id that stands for the visual rows inside vLLM. It must be one vocabulary token that the
# tokenizer never makes from ordinary text: Qwen2's end-of-text marker (absent from chat prompts).
PLACEHOLDER = "<|endoftext|>"
DEFAULT_MAX_FRAMES = 512  # the official sampler's default cap


def flash_config(hf_config) -> VideoChatFlashConfig:
    """longvid's reader over vLLM's config (the released config.json plus any `hf_overrides`)."""
    return VideoChatFlashConfig.from_dict(hf_config.to_dict())


def pad_to_clips(frames: Sequence[Any], frames_per_clip: int) -> list[Any]:
    """Repeat the last frame up to whole clips, as longvid's `SamplingPlan.padded_to_multiple` does."""
    frames = list(frames)
    return frames + [frames[-1]] * (-len(frames) % frames_per_clip)


class VideoChatFlashProcessingInfo(BaseProcessingInfo):
    @cached_property
    def flash(self) -> VideoChatFlashConfig:
        return flash_config(self.get_hf_config())

    @cached_property
    def squash(self) -> SquashProcessor:
        return SquashProcessor(self.flash.vision.image_size)

    @cached_property
    def placeholder_id(self) -> int:
        token = self.get_tokenizer().convert_tokens_to_ids(PLACEHOLDER)
        if not isinstance(token, int) or token < 0:
            raise ConfigError(f"the tokenizer has no {PLACEHOLDER} token (a Qwen2 tokenizer is expected)")
        return token

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": 1, "video": 1}  # the released model takes one visual input per conversation

    def tokens_for_frames(self, num_frames: int) -> int:
        fpc = self.flash.frames_per_clip
        return 16 * (num_frames + (-num_frames % fpc))  # ToMe keeps 16 tokens per frame of whole clips

    def max_frames(self, seq_len: int) -> int:
        """The longest video whose tokens fit `seq_len` (whole clips), at most the sampler's default cap."""
        fpc = self.flash.frames_per_clip
        return max(min(DEFAULT_MAX_FRAMES, seq_len // 16) // fpc * fpc, fpc)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": 64, "video": self.tokens_for_frames(self.max_frames(seq_len))}


class VideoChatFlashDummyInputsBuilder(BaseDummyInputsBuilder[VideoChatFlashProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return PLACEHOLDER * (mm_counts.get("image", 0) + mm_counts.get("video", 0))

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Mapping[str, BaseDummyOptions]
    ) -> dict[str, Any]:
        size = self.info.flash.vision.image_size
        return {
            "image": self._get_dummy_images(
                width=size, height=size, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
            ),
            "video": self._get_dummy_videos(
                width=size,
                height=size,
                num_frames=self.info.max_frames(seq_len),
                num_videos=mm_counts.get("video", 0),
                overrides=mm_options.get("video"),
            ),
        }


def _frames_of(video: Any) -> list[np.ndarray]:
    if isinstance(video, tuple):  # (frames, metadata)
        video = video[0]
    if isinstance(video, torch.Tensor):
        video = video.cpu().numpy()
    return list(video)


class VideoChatFlashMultiModalProcessor(BaseMultiModalProcessor[VideoChatFlashProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Pixels as longvid's `SquashProcessor` makes them; videos padded to whole clips."""
        info, out = self.info, {}
        if images := hf_data.get("images"):
            out["pixel_values"] = info.squash(list(images))
        if videos := hf_data.get("videos"):
            fpc = info.flash.frames_per_clip
            out["pixel_values_videos"] = [info.squash(pad_to_clips(_frames_of(v), fpc)) for v in videos]
        return BatchFeature(out)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "image_embeds": MultiModalFieldConfig.batched("image"),
            "pixel_values_videos": MultiModalFieldConfig.batched("video"),
            "video_embeds": MultiModalFieldConfig.batched("video"),
        }

    def _postprocess_prompt(self, prompt: list[int]) -> list[int]:
        """`<image>` in the text -> one placeholder id, the text around it tokenised piece by piece (the
        official `tokenizer_image_token`), so the ids equal longvid's and the official code's."""
        placeholder = self.info.placeholder_id
        if placeholder in prompt:  # already token ids from longvid.vllm.inputs
            return prompt
        tokenizer = self.info.get_tokenizer()
        text = tokenizer.decode(prompt)
        if IMAGE_TOKEN not in text:
            return prompt
        return [placeholder if t == IMAGE_TOKEN_INDEX else t for t in tokenize_with_image(tokenizer, text)]

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        info = self.info

        def rows(modality: str):
            def replacement(i: int) -> list[int]:
                items = mm_items.get_items(modality, (EmbeddingItems, ProcessorBatchItems))
                if isinstance(items, EmbeddingItems):
                    n = items.get_feature_size(i)
                elif modality == "image":
                    n = 64
                else:
                    n = info.tokens_for_frames(items.get_num_frames(i))
                return [info.placeholder_id] * n

            return replacement

        return [
            PromptReplacement(modality=m, target=[info.placeholder_id], replacement=rows(m))
            for m in ("image", "video")
            if m in mm_items
        ]


@MULTIMODAL_REGISTRY.register_processor(
    VideoChatFlashMultiModalProcessor,
    info=VideoChatFlashProcessingInfo,
    dummy_inputs=VideoChatFlashDummyInputsBuilder,
)
class VideoChatFlashForVLLM(nn.Module, SupportsMultiModal):
    """The released VideoChat-Flash: `vision_tower` + `projector` (longvid's), `language_model` (vLLM's)."""

    # released safetensors names -> this module's (applied in order; the Qwen2 keeps its own names)
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.vision_tower.vision_tower.": "vision_tower.",
            "model.mm_projector.": "projector.",
            "model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
        }
    )
    clips_per_step = 16  # clips through the tower at once (bounds activation memory on long videos)

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality in ("image", "video"):
            return IMAGE_TOKEN
        raise ValueError(f"VideoChat-Flash takes images and videos, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        hf_config = vllm_config.model_config.hf_config
        cfg = flash_config(hf_config)
        if cfg.token_drop is not None:
            raise ConfigError(
                "mm_llm_compress=true (in-LLM visual token dropping) is not supported inside vLLM: its paged "
                "KV cache keeps every prompt row in every layer. Serve this checkpoint with longvid's own "
                "engine (`longvid serve`), or load it with hf_overrides={'mm_llm_compress': False} to run it "
                "without dropping (answers then differ from the released model's)."
            )
        self.flash = cfg
        with self._mark_tower_model(vllm_config, {"image", "video"}):
            self.vision_tower = build_vision_tower(cfg.vision)
            self.projector = ToMeMlpProjector(cfg.mm_hidden_size, cfg.llm.hidden_size, self.vision_tower.num_heads)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=hf_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ------------------------------------------------------------------------------ visual rows

    def _encode(self, clips: list[torch.Tensor], is_image: bool) -> list[torch.Tensor]:
        """Clips [T, 3, S, S] (one per item) -> LLM-space rows [16*T or 64, hidden], a few clips per step."""
        param = next(self.projector.parameters())
        flat = torch.cat([c.to(param.device, param.dtype) for c in clips])
        t = 1 if is_image else self.flash.frames_per_clip
        flat = flat.reshape(-1, t, *flat.shape[1:])
        out = []
        for chunk in flat.split(self.clips_per_step):
            out.append(self.projector(self.vision_tower(chunk), t, is_image).flatten(0, 1))
        rows = torch.cat(out)
        return list(rows.split([(64 if is_image else 16 * c.shape[0]) for c in clips]))

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        out: list[torch.Tensor] = []
        dtype = next(self.projector.parameters()).dtype
        for key in ("image_embeds", "video_embeds"):  # precomputed rows: as they are
            if (embeds := kwargs.get(key)) is not None:
                out += [e.to(dtype) for e in embeds]
        if (images := kwargs.get("pixel_values")) is not None:
            out += self._encode([img[None] for img in images], is_image=True)
        if (videos := kwargs.get("pixel_values_videos")) is not None:
            out += self._encode(list(videos), is_image=False)
        return out

    # ------------------------------------------------------------------------------ the LLM

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
