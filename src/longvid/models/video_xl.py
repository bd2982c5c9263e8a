"""Video-XL: CLIP per frame -> MLP -> 2x2 pooling -> Qwen2 that reads the video in windows and keeps only VSTs.

Loads the released checkpoint (`sy1998/Video_XL`, `VideoXL_weight_8`) as it is: same config.json, same
safetensors key names, no remote code. The path from video to answer:

    frames (np.linspace over the video, 128 by default) -> shortest side S, centre crop, CLIP mean/std
      -> CLIP ViT-L/14-336, hidden_states[mm_vision_select_layer] without CLS     (in chunks of frames)
      -> mm_projector Linear-GELU-Linear on every patch, then 2x2 average pooling -> 144 tokens per frame
      -> ChatML prompt "<image>\\n{question}"
      -> Qwen2: the prompt before the video in one step (kept whole), the video in beacon windows of which
         only the visual summarization tokens stay cached (compress/beacon.py), the text after it
         uncompressed in windows of at most `beacon_window` tokens, then decoding.

Release quirks, and what happens to them here:

* The release's loader resizes the vocabulary by one random row and uses ids `vocab` / `vocab + 1` for
  the visual placeholders / VSTs. Neither id is ever looked up, so the checkpoint's rows are kept and the
  placeholders and VSTs are plain rows of the window tensor; logits have the checkpoint's vocab size.
* The compressed span must be exactly the visual tokens: it is taken from the `<image>` position and the
  real number of visual tokens, never from the training code's constant 14 (a `--system` prompt moves it).
* `enable_beacon` is ignored by the release; here `false` reads the video uncompressed (a plain prefill),
  which is what compression is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig

from ..budget import TokenBudget
from ..compress.beacon import BeaconCompressor, BeaconConfig, BeaconPlan
from ..errors import BudgetError, ConfigError, InputError
from ..llm import KVCache, Qwen2Config, Qwen2ForCausalLM
from ..llm.qwen2 import Step
from ..prompt import IMAGE_TOKEN_INDEX
from ..video import SamplingPlan, linspace_plan
from ..vision.clip import ClipTower, clip_config
from ..vision.processor import ClipProcessor
from .base import ReleaseKeys, VideoLLM

FAMILY = "video_xl"
# our parameter names -> the release's (the LLM keeps Qwen2's names, under `llm.`)
RELEASE_PREFIXES = {
    "vision_tower.": "model.vision_tower.vision_tower.",
    "projector.": "model.mm_projector.",
    "llm.": "",
}
DEFAULT_FRAMES = 128  # the official lmms-eval setting (max_frames_num=128)


@dataclass
class VideoXLConfig:
    raw: dict[str, Any]  # config.json as read (plus --set overrides)
    llm: Qwen2Config
    vision: CLIPVisionConfig
    select_layer: int  # mm_vision_select_layer
    mm_hidden_size: int
    pool_stride: int  # mm_spatial_pool_stride
    beacon: BeaconConfig
    max_length: int  # tokenizer_model_max_length: positions the LLM may use

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoXLConfig:
        for key, allowed in (
            ("mm_projector_type", "mlp2x_gelu"),
            ("mm_vision_select_feature", "patch"),
            ("mm_spatial_pool_mode", "average"),
        ):
            if d.get(key, allowed) != allowed:
                raise ConfigError(f"{key}={d[key]!r} is not supported (only {allowed!r} was released)")
        llm = Qwen2Config.from_dict(d)
        if not llm.beacon_param or set(llm.beacon_param) - {"q", "k", "v"}:
            raise ConfigError(f"beacon_param={llm.beacon_param!r} is not supported (Video-XL uses ['q', 'k', 'v'])")
        vision = clip_config(d)
        mm_hidden = int(d.get("mm_hidden_size", vision.hidden_size))
        if mm_hidden != vision.hidden_size:
            raise ConfigError(f"mm_hidden_size {mm_hidden} != vision tower width {vision.hidden_size}")
        stride, grid = int(d.get("mm_spatial_pool_stride", 2)), vision.image_size // vision.patch_size
        if not 1 <= stride <= grid:
            raise ConfigError(f"mm_spatial_pool_stride={stride} does not fit the {grid}x{grid} patch grid")
        return cls(
            raw=dict(d),
            llm=llm,
            vision=vision,
            select_layer=int(d.get("mm_vision_select_layer", -1)),
            mm_hidden_size=mm_hidden,
            pool_stride=stride,
            beacon=BeaconConfig.from_release(d),
            max_length=int(d.get("tokenizer_model_max_length") or llm.max_position_embeddings),
        )

    @property
    def tokens_per_frame(self) -> int:
        return (self.vision.image_size // self.vision.patch_size // self.pool_stride) ** 2


def pool_frames(x: torch.Tensor, grid: int, stride: int) -> torch.Tensor:
    """Average-pool each frame's `grid` x `grid` tokens [F, grid^2, C] with `stride`; row-major out."""
    f, _, c = x.shape
    x = F.avg_pool2d(x.view(f, grid, grid, c).permute(0, 3, 1, 2), stride)
    return x.permute(0, 2, 3, 1).reshape(f, -1, c)


class VideoXLModel(ReleaseKeys, nn.Module):
    """The weights: `vision_tower`, `projector`, `llm` (release names differ only by prefix)."""

    release_prefixes = RELEASE_PREFIXES

    def __init__(self, config: VideoXLConfig):
        super().__init__()
        self.config = config
        self.vision_tower = ClipTower(config.vision, config.select_layer)
        hidden = config.llm.hidden_size
        self.projector = nn.Sequential(nn.Linear(config.mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.llm = Qwen2ForCausalLM(config.llm)

    # ------------------------------------------------------------------------------ vision side

    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [F, 3, S, S] -> visual tokens [F, tokens_per_frame, hidden] (projector *before* pooling)."""
        projected = self.projector(self.vision_tower(pixels))
        return pool_frames(projected, self.vision_tower.grid, self.config.pool_stride)

    # ------------------------------------------------------------------------------ LLM side

    def prefill_video(
        self, prefix: torch.Tensor, visual: torch.Tensor, cache: KVCache, plan: BeaconPlan | None
    ) -> None:
        """Cache the prompt prefix [B, S, H] and the video [B, N, H] that follows it.

        The prefix is one uncompressed step (the release's "sink"). Each window of `plan` is then one step:
        a zero tensor with the visual rows in order and the VST embedding at the plan's VST rows, the VSTs
        routed through the beacon q/k/v, and only their keys/values kept, at compact positions. Without a
        plan the video is read uncompressed."""
        llm = self.llm
        if plan is None:
            self._step(torch.cat([prefix, visual], dim=1), cache, Step())
            return
        if prefix.shape[1]:
            self._step(prefix, cache, Step())
        vst = llm.model.beacon_embed_tokens.weight[0].to(visual.dtype)
        b, _, h = visual.shape
        for w in plan.windows:
            if not w.num_vst:  # nothing of this window would stay in the cache
                continue
            mask = w.vst_mask(visual.device)
            x = visual.new_zeros(b, w.size, h)
            x[:, ~mask] = visual[:, w.start : w.start + w.length]
            x[:, mask] = vst
            self._step(x, cache, Step(beacon_mask=mask, keep=mask.nonzero().squeeze(1)))

    def extend_text(self, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed text [B, T, H] (T >= 1) uncompressed, `beacon_window` rows per step; the last row's hidden [B, H]."""
        window = self.config.beacon.window
        for start in range(0, embeds.shape[1], window):
            hidden = self._step(embeds[:, start : start + window], cache, Step())
        return hidden[:, -1]

    def _step(self, x: torch.Tensor, cache: KVCache, step: Step) -> torch.Tensor:
        """One step of the release's loop: rows `x` [B, n, H] -> their final-norm hidden states."""
        return self.llm(x, cache, step=step).hidden


@dataclass
class BeaconBudget(TokenBudget):
    """Video-XL's context is counted in positions, not raw tokens: the prompt text, the VSTs kept so far, and
    the one window being read (its rows take positions until it is compacted)."""

    positions: int = 0  # the most positions in use at once while reading the prompt
    window_rows: int = 0  # raw visual rows per window
    kv_per_frame: float = 0.0  # VSTs kept per frame

    @property
    def context_tokens(self) -> int:
        return self.positions

    def max_frames(self) -> int:
        room = self.context_limit - self.text_tokens - self.window_rows
        return max(int(room // self.kv_per_frame), 0) if self.kv_per_frame else 0

    def check(self) -> None:
        if self.fits:
            return
        raise BudgetError(
            f"{self.visual_tokens} visual tokens kept as {self.kv_tokens_per_layer[0] - self.text_tokens} summary "
            f"tokens + {self.text_tokens} text tokens need {self.positions} positions, over the model's "
            f"{self.context_limit}; sample at most {self.max_frames()} frames (--max-frames / --fps) or "
            f"compress more (e.g. --set beacon_ratio=[16])"
        )


class VideoXL(VideoLLM):
    family = FAMILY
    default_generation = {"do_sample": False}  # the official evaluations decode greedily
    encode_batch = 8  # CLIP + projector + pooling run on this many frames at a time

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = ClipProcessor(self.config.vision.image_size, self.config.vision.image_size)
        self.compressor = BeaconCompressor(self.config.beacon)

    @property
    def compressors(self) -> list:
        return [self.compressor]

    def context_limit(self) -> int:
        return self.config.max_length

    def visual_token_count(self, plan: SamplingPlan) -> int:
        return self.config.tokens_per_frame * len(plan)

    # ------------------------------------------------------------------------------ frames -> tokens

    def default_plan(self, count: int, fps: float, max_frames: int | None, first: int) -> SamplingPlan:
        """`np.linspace(0, T-1, N, dtype=int)` with N = `max_frames` (128) capped at the frame count, so a
        short clip is read frame by frame rather than with repeats. A still image is a one-frame video (the
        release's anyres image path is not reproduced)."""
        return linspace_plan(count, fps, min(max_frames or DEFAULT_FRAMES, count), first)

    def exact_plan(self, count: int, fps: float, num_frames: int, first: int) -> SamplingPlan:
        return linspace_plan(count, fps, num_frames, first)

    def encode_pixels(self, pixels: torch.Tensor, plan: SamplingPlan) -> torch.Tensor:
        """CLIP -> projector -> 2x2 pooling, each frame on its own (so chunking changes no number)."""
        return self.model.encode_frames(pixels).flatten(0, 1)

    def user_message(self, question: str, plan: SamplingPlan) -> str:
        return f"<image>\n{question}"

    # ------------------------------------------------------------------------------ prompt -> cache

    def beacon_plan(self, num_visual: int) -> BeaconPlan | None:
        """The window plan for `num_visual` tokens (None when compression is off). Fresh RNG every call."""
        return self.compressor.plan(num_visual) if self.config.beacon.enabled else None

    def prefill(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> torch.Tensor | None:
        """The text before the video in one step, the video in beacon windows, the text after it in windows."""
        cut = ids.index(IMAGE_TOKEN_INDEX)
        llm = self.model.llm
        prefix = llm.embed(torch.tensor([ids[:cut]], device=self.device, dtype=torch.long))
        plan = self.beacon_plan(visual.shape[0])
        kept = plan.num_vst if plan is not None else visual.shape[0]
        # allocate the cache once for the whole prompt and the answer (the plan says how much stays)
        cache.reserve(kept + self.config.beacon.window + self.generation.max_new_tokens)
        self.model.prefill_video(prefix, visual[None].to(prefix.dtype), cache, plan)
        cache.reserve(self.generation.max_new_tokens)
        return self.decode_step(ids[cut + 1 :], cache) if cut + 1 < len(ids) else None

    def decode_step(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Text after the video is read uncompressed, in windows of at most `beacon_window` tokens."""
        if not ids:
            raise InputError("no text to feed after the video")
        llm = self.model.llm
        embeds = llm.embed(torch.tensor([ids], device=self.device, dtype=torch.long))
        return llm.logits(self.model.extend_text(embeds, cache))[0]

    # ------------------------------------------------------------------------------ budgets

    def budget(self, text_tokens: int, num_visual: int, num_frames: int = 0) -> TokenBudget:
        """With compression on, the context is counted in positions (`BeaconBudget`)."""
        base = super().budget(text_tokens, num_visual, num_frames)
        plan = self.beacon_plan(num_visual)
        if plan is None:
            return base
        same = {f.name: getattr(base, f.name) for f in fields(base) if f.init}
        return BeaconBudget(
            **same,
            positions=plan.peak_rows(text_tokens),
            window_rows=self.config.beacon.window,
            kv_per_frame=plan.num_vst / num_frames if num_frames else 0.0,
        )

    def memory_report(self, num_frames: int) -> dict[str, Any]:
        """What the LLM caches for `num_frames` frames, uncompressed and at ratios 2/4/8/16 (`longvid info`).

        Text tokens are left out: they cost the same in every row."""
        n = num_frames * self.config.tokens_per_frame
        per_token = self.config.llm.num_hidden_layers * self.kv_bytes_per_token()
        rows = []
        for ratio in (2, 4, 8, 16):
            plan = BeaconCompressor(replace(self.config.beacon, ratios=[ratio])).plan(n)
            rows.append(
                {
                    "ratio": ratio,
                    "kv_tokens_per_window": plan.windows[0].num_vst if plan.windows else 0,
                    "kv_tokens": plan.num_vst,
                    "kv_bytes": plan.num_vst * per_token,
                }
            )
        kept = self.compressor.kv_tokens(n, 1)[0]
        return {
            "frames": num_frames,
            "visual_tokens": n,
            "window": self.config.beacon.window,
            "windows": -(-n // self.config.beacon.window),
            "kv_bytes_per_token": per_token,
            "uncompressed": {"kv_tokens": n, "kv_bytes": n * per_token},
            "configured": {"policy": self.compressor.describe(), "kv_tokens": kept, "kv_bytes": kept * per_token},
            "ratios": rows,
        }
