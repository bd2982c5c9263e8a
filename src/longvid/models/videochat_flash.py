"""VideoChat-Flash (HiCo): video ViT per clip -> ToMe to 16 tokens/frame -> MLP -> Qwen2 (+ in-LLM dropping).

Loads the released checkpoints (`OpenGVLab/VideoChat-Flash-*`) as they are: same config.json, same
safetensors key names, no remote code. The path from video to answer:

    frames (official ~1 fps sampler) -> squash to SxS, ImageNet-normalise
      -> clips of `mm_local_num_frames` frames -> UMT-L / InternVideo2 tower
      -> ToMe inside each clip to 16 tokens per frame -> MLP into the LLM width
      -> 16*N tokens spliced at `<image>` in the ChatML prompt (with the time message)
      -> Qwen2, optionally dropping visual rows between layers -> answer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..compress.token_drop import TokenDropConfig, VideoTokenDrop
from ..compress.tome import ToMeCompressor
from ..errors import ConfigError
from ..llm import KVCache, Qwen2Config, Qwen2ForCausalLM
from ..llm.qwen2 import DecoderOutput
from ..prompt import IMAGE_TOKEN_INDEX, time_message
from ..video import SamplingPlan, uniform_plan, videochat_flash_plan
from ..vision import SquashProcessor, build_vision_tower, vision_config
from .base import ReleaseKeys, VideoLLM

FAMILY = "videochat_flash"
# our parameter names -> the release's (the LLM keeps Qwen2's names, under `llm.`)
RELEASE_PREFIXES = {
    "vision_tower.": "model.vision_tower.vision_tower.",
    "projector.": "model.mm_projector.",
    "llm.": "",
}


@dataclass
class VideoChatFlashConfig:
    raw: dict[str, Any]  # config.json as read (plus --set overrides); written back unchanged on save
    llm: Qwen2Config
    vision: Any  # UMTConfig | InternVideo2Config
    mm_hidden_size: int
    frames_per_clip: int
    token_drop: TokenDropConfig | None
    max_length: int  # tokenizer_model_max_length: the official code truncates there, we refuse instead

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoChatFlashConfig:
        for key, allowed in (
            ("mm_projector_type", "tome16_mlp_hd64"),
            ("vision_encode_type", "video_image"),
            ("mm_newline_position", "nothing"),
        ):
            if d.get(key, allowed) != allowed:
                raise ConfigError(f"{key}={d[key]!r} is not supported (only {allowed!r} was released)")
        llm = Qwen2Config.from_dict(d)
        vision = vision_config(d)
        frames = int(d.get("mm_local_num_frames", 4))
        if frames < 1:
            raise ConfigError("mm_local_num_frames must be positive")
        return cls(
            raw=dict(d),
            llm=llm,
            vision=vision,
            mm_hidden_size=int(d.get("mm_hidden_size", vision.embed_dim)),
            frames_per_clip=frames,
            token_drop=TokenDropConfig.from_release(d),
            max_length=int(d.get("tokenizer_model_max_length") or llm.max_position_embeddings),
        )


class ToMeMlpProjector(nn.Module):
    """`tome16_mlp_hd64`: ToMe merge in the encoder's space, then Linear -> GELU -> Linear."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, num_heads: int):
        super().__init__()
        self.tome = ToMeCompressor(num_heads)
        self.mlp = nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, feats: torch.Tensor, frames_per_clip: int, is_image: bool = False) -> torch.Tensor:
        return self.mlp(self.tome(feats, frames_per_clip, is_image))


class VideoChatFlashModel(ReleaseKeys, nn.Module):
    """The weights: `vision_tower`, `projector`, `llm` (release names differ only by prefix)."""

    release_prefixes = RELEASE_PREFIXES

    def __init__(self, config: VideoChatFlashConfig):
        super().__init__()
        self.config = config
        self.vision_tower = build_vision_tower(config.vision)
        if self.vision_tower.hidden_size != config.mm_hidden_size:
            raise ConfigError(
                f"mm_hidden_size {config.mm_hidden_size} != vision tower width {self.vision_tower.hidden_size}"
            )
        self.projector = ToMeMlpProjector(config.mm_hidden_size, config.llm.hidden_size, self.vision_tower.num_heads)
        self.llm = Qwen2ForCausalLM(config.llm)
        self.token_drop = VideoTokenDrop(config.token_drop) if config.token_drop is not None else None

    def encode_clips(self, clips: torch.Tensor, is_image: bool = False) -> torch.Tensor:
        """Pixels [n_clips, T, 3, S, S] -> LLM-space tokens [n_clips, 16*T (64 for an image), hidden]."""
        return self.projector(self.vision_tower(clips), clips.shape[1], is_image)

    def embed_prompt(self, ids: list[int], visual: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Text embeddings with `visual` spliced at the IMAGE_TOKEN_INDEX; returns (embeds [1,L,H], image_start)."""
        start = ids.index(IMAGE_TOKEN_INDEX)
        device = visual.device
        before = self.llm.embed(torch.tensor(ids[:start], device=device, dtype=torch.long))
        after = self.llm.embed(torch.tensor(ids[start + 1 :], device=device, dtype=torch.long))
        return torch.cat([before, visual.to(before.dtype), after])[None], start

    def forward(
        self,
        ids: list[int],
        visual: torch.Tensor,
        cache: KVCache | None = None,
        kept_rows: list | None = None,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """The LLM over text + visual rows, dropping visual rows between layers if configured."""
        embeds, start = self.embed_prompt(ids, visual)
        hook = None
        if self.token_drop is not None:
            hook = self.token_drop.hook(self.llm, start, visual.shape[0], kept_rows)
        return self.llm(embeds, cache, after_layer=hook, output_hidden_states=output_hidden_states)


class VideoChatFlash(VideoLLM):
    family = FAMILY
    default_generation = {"do_sample": False}  # the official chat() demo settings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = SquashProcessor(self.config.vision.image_size)
        self.frames_multiple = self.config.frames_per_clip
        self.encode_batch = 4 * self.frames_multiple  # four clips per step

    @property
    def compressors(self) -> list:
        out: list = [self.model.projector.tome]  # clip-level, before the LLM
        if self.model.token_drop is not None:
            out.append(self.model.token_drop)
        return out

    @property
    def question_dependent(self) -> bool:
        return self.model.token_drop is not None and self.model.token_drop.question_dependent

    def context_limit(self) -> int:
        return self.config.max_length

    def default_plan(self, count: int, fps: float, max_frames: int | None, first: int) -> SamplingPlan:
        return videochat_flash_plan(count, fps, max_frames if max_frames is not None else 512, first_index=first)

    def exact_plan(self, count: int, fps: float, num_frames: int, first: int) -> SamplingPlan:
        return uniform_plan(count, fps, num_frames, first)

    def visual_token_count(self, plan: SamplingPlan) -> int:
        tome = self.model.projector.tome
        return tome.tokens_per_image if plan.is_image else tome.tokens_per_frame * len(plan)

    def encode_pixels(self, pixels: torch.Tensor, plan: SamplingPlan) -> torch.Tensor:
        """Clips of `frames_per_clip` frames -> tower -> ToMe -> MLP; an image is one T=1 clip (64 tokens)."""
        if plan.is_image:
            return self.model.encode_clips(pixels[:, None], is_image=True).flatten(0, 1)
        clips = pixels.reshape(-1, self.frames_multiple, *pixels.shape[1:])
        return self.model.encode_clips(clips).flatten(0, 1)

    def user_message(self, question: str, plan: SamplingPlan) -> str:
        if plan.is_image:
            return f"<image>\n{question}"
        return f"<image>\n{time_message(plan.duration, len(plan)).strip()} {question}"

    def prefill(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> torch.Tensor | None:
        """One forward over the prompt when the kept rows depend on the question; otherwise the video prefix
        (what a chat session keeps) and then the text after it, so that fresh calls and sessions agree."""
        cut = ids.index(IMAGE_TOKEN_INDEX) + 1
        if cut < len(ids) and not self.question_dependent:
            self.model(ids[:cut], visual, cache)
            return self.decode_step(ids[cut:], cache)
        hidden = self.model(ids, visual, cache).hidden
        return None if cut == len(ids) else self.model.llm.logits(hidden[:, -1])[0]
