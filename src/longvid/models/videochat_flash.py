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

from ..compress.tome import ToMeCompressor
from ..compress.token_drop import TokenDropConfig, VideoTokenDrop
from ..errors import ConfigError, InputError
from ..llm import KVCache, Qwen2Config, Qwen2ForCausalLM
from ..prompt import IMAGE_TOKEN_INDEX, time_message
from ..video import SamplingPlan, Video, fps_plan, timestamps_plan, trim, uniform_plan, videochat_flash_plan
from ..vision import SquashProcessor, build_vision_tower, vision_config
from .base import Timer, VideoLLM, VisualTokens, batched, progress_bar

FAMILY = "videochat_flash"
VISION_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."


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
    def from_dict(cls, d: dict[str, Any]) -> "VideoChatFlashConfig":
        for key, allowed in (("mm_projector_type", "tome16_mlp_hd64"), ("vision_encode_type", "video_image"),
                             ("mm_newline_position", "nothing")):
            if d.get(key, allowed) != allowed:
                raise ConfigError(f"{key}={d[key]!r} is not supported (only {allowed!r} was released)")
        llm = Qwen2Config.from_dict(d)
        vision = vision_config(d)
        frames = int(d.get("mm_local_num_frames", 4))
        if frames < 1:
            raise ConfigError("mm_local_num_frames must be positive")
        return cls(dict(d), llm, vision, int(d.get("mm_hidden_size", vision.embed_dim)), frames,
                   TokenDropConfig.from_release(d), int(d.get("tokenizer_model_max_length") or llm.max_position_embeddings))


class ToMeMlpProjector(nn.Module):
    """`tome16_mlp_hd64`: ToMe merge in the encoder's space, then Linear -> GELU -> Linear."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, num_heads: int):
        super().__init__()
        self.tome = ToMeCompressor(num_heads)
        self.mlp = nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, feats: torch.Tensor, frames_per_clip: int, is_image: bool = False, trace=None) -> torch.Tensor:
        decisions = trace.setdefault("tome", []) if trace is not None else None
        merged = self.tome(feats, frames_per_clip, is_image, decisions)
        if trace is not None:
            trace["tome_merged"] = merged
        return self.mlp(merged)


class VideoChatFlashModel(nn.Module):
    """The weights: `vision_tower`, `projector`, `llm` (release names differ only by prefix, see below)."""

    def __init__(self, config: VideoChatFlashConfig):
        super().__init__()
        self.config = config
        self.vision_tower = build_vision_tower(config.vision)
        if self.vision_tower.hidden_size != config.mm_hidden_size:
            raise ConfigError(f"mm_hidden_size {config.mm_hidden_size} != vision tower width {self.vision_tower.hidden_size}")
        self.projector = ToMeMlpProjector(config.mm_hidden_size, config.llm.hidden_size, self.vision_tower.num_heads)
        self.llm = Qwen2ForCausalLM(config.llm)

    # release key names <-> ours
    @staticmethod
    def from_release_key(key: str) -> str:
        if key.startswith(VISION_PREFIX):
            return "vision_tower." + key[len(VISION_PREFIX):]
        if key.startswith(PROJECTOR_PREFIX):
            return "projector." + key[len(PROJECTOR_PREFIX):]
        return "llm." + key

    @staticmethod
    def to_release_key(key: str) -> str:
        if key.startswith("vision_tower."):
            return VISION_PREFIX + key[len("vision_tower."):]
        if key.startswith("projector."):
            return PROJECTOR_PREFIX + key[len("projector."):]
        return key[len("llm."):]

    def encode_clips(self, clips: torch.Tensor, is_image: bool = False, trace: dict | None = None) -> torch.Tensor:
        """Pixels [n_clips, T, 3, S, S] -> LLM-space tokens [n_clips, 16*T (64 for an image), hidden]."""
        feats = self.vision_tower(clips)
        if trace is not None:
            trace["vision_tower_out"] = feats
        return self.projector(feats, clips.shape[1], is_image, trace)

    def encode_frames(self, pixels: torch.Tensor, clip_batch: int = 8) -> torch.Tensor:
        """All frames of a video [N, 3, S, S] (N a multiple of the clip length) -> [16*N, hidden]."""
        t = self.config.frames_per_clip
        if pixels.shape[0] % t:
            raise InputError(f"{pixels.shape[0]} frames do not fill clips of {t}")
        clips = pixels.reshape(-1, t, *pixels.shape[1:])
        out = [self.encode_clips(clips[i : i + clip_batch]) for i in range(0, len(clips), clip_batch)]
        return torch.cat(out).flatten(0, 1)

    def embed_prompt(self, ids: list[int], visual: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Text embeddings with `visual` spliced at the IMAGE_TOKEN_INDEX; returns (embeds [1,L,H], image_start)."""
        start = ids.index(IMAGE_TOKEN_INDEX)
        device = visual.device
        before = self.llm.embed(torch.tensor(ids[:start], device=device, dtype=torch.long))
        after = self.llm.embed(torch.tensor(ids[start + 1 :], device=device, dtype=torch.long))
        return torch.cat([before, visual.to(before.dtype), after])[None], start


class VideoChatFlash(VideoLLM):
    family = FAMILY
    default_generation = {"do_sample": False}  # the official chat() demo settings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = SquashProcessor(self.config.vision.image_size)

    @property
    def compressors(self) -> list:
        out: list = [self.model.projector.tome]  # clip-level, before the LLM
        if self.config.token_drop is not None:
            out.append(VideoTokenDrop(self.config.token_drop))
        return out

    def visual_token_count(self, plan: SamplingPlan) -> int:
        tome = self.model.projector.tome
        return tome.tokens_per_image if plan.is_image else tome.tokens_per_frame * len(plan)

    def context_limit(self) -> int:
        return self.config.max_length

    def sampling_plan(self, video: Video, max_frames: int | None = None, fps: float | None = None,
                      num_frames: int | None = None, timestamps: list[float] | None = None,
                      start: float | None = None, end: float | None = None) -> SamplingPlan:
        if video.is_image:
            return SamplingPlan.image()
        first, count = trim(video, start, end)
        if timestamps:
            plan = timestamps_plan(count, video.fps, [t - (start or 0) for t in timestamps], first)
        elif num_frames:
            plan = uniform_plan(count, video.fps, num_frames, first)
        elif fps:
            plan = fps_plan(count, video.fps, fps, max_frames or 0, first)
        else:
            plan = videochat_flash_plan(count, video.fps, max_frames if max_frames is not None else 512, first_index=first)
        return plan.padded_to_multiple(self.config.frames_per_clip)

    def pixels(self, frames) -> torch.Tensor:
        return self.processor(frames).to(self.device, self.dtype)

    @torch.no_grad()
    def encode(self, video: Video, plan: SamplingPlan, progress: bool = False, clip_batch: int = 4) -> VisualTokens:
        """Decode -> preprocess -> tower -> ToMe -> MLP, `clip_batch` clips at a time.

        Host memory holds one batch of frames plus the compressed tokens, whatever the video's length."""
        timer = Timer()
        frames = video.frames(plan.indices)
        if plan.is_image:  # one T=1 clip with the image position table, ToMe to 64 tokens
            with timer("decode"):
                pixels = self.pixels(list(frames))
            with timer("encode"):
                tokens = self.model.encode_clips(pixels[:, None], is_image=True)[0]
            return VisualTokens(tokens, plan, timer.times)
        t = self.config.frames_per_clip
        per_frame = self.model.projector.tome.tokens_per_frame
        tokens = torch.empty(len(plan) * per_frame, self.config.llm.hidden_size, device=self.device, dtype=self.dtype)
        done = 0
        with progress_bar(len(plan) // t, "encoding clips", progress) as bar:
            for batch in batched(frames, clip_batch * t, timer):
                with timer("decode"):
                    pixels = self.pixels(batch)
                with timer("encode"):
                    out = self.model.encode_clips(pixels.reshape(-1, t, *pixels.shape[1:])).flatten(0, 1)
                tokens[done : done + len(out)] = out
                done += len(out)
                bar.update(len(batch) // t)
        return VisualTokens(tokens, plan, timer.times)

    def user_message(self, question: str, plan: SamplingPlan) -> str:
        if plan.is_image:
            return f"<image>\n{question}"
        return f"<image>\n{time_message(plan.duration, len(plan)).strip()} {question}"

    @property
    def question_dependent(self) -> bool:
        drop = self.config.token_drop
        return drop is not None and VideoTokenDrop(drop).question_dependent

    def forward_prompt(self, ids: list[int], visual: torch.Tensor, cache: KVCache | None = None,
                       kept_rows: list | None = None, output_hidden_states: bool = False):
        """The LLM over text + visual rows (with in-LLM dropping if configured); a `DecoderOutput`."""
        embeds, start = self.model.embed_prompt(ids, visual)
        hook = None
        if self.config.token_drop is not None:
            hook = VideoTokenDrop(self.config.token_drop).hook(self.model.llm, start, visual.shape[0], kept_rows)
        return self.model.llm(embeds, cache, after_layer=hook, output_hidden_states=output_hidden_states)

    def prefill_video(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> None:
        self.forward_prompt(ids, visual, cache)

    def prefill_full(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.model.llm.logits(self.forward_prompt(ids, visual, cache).hidden[:, -1])[0]
