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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig

from ..compress.beacon import BeaconCompressor, BeaconConfig, BeaconPlan
from ..errors import BudgetError, ConfigError, InputError
from ..llm import KVCache, Qwen2Config, Qwen2ForCausalLM
from ..llm.qwen2 import Step
from ..prompt import IMAGE_TOKEN_INDEX
from ..video import SamplingPlan, Video, fps_plan, linspace_plan, timestamps_plan, trim
from ..vision.clip import ClipTower, clip_config
from ..vision.processor import ClipProcessor
from .base import Timer, TokenBudget, VideoLLM, VisualTokens, batched, progress_bar

FAMILY = "video_xl"
VISION_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
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
    def from_dict(cls, d: dict[str, Any]) -> "VideoXLConfig":
        for key, allowed in (("mm_projector_type", "mlp2x_gelu"), ("mm_vision_select_feature", "patch"),
                             ("mm_spatial_pool_mode", "average")):
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
        return cls(dict(d), llm, vision, int(d.get("mm_vision_select_layer", -1)), mm_hidden, stride,
                   BeaconConfig.from_release(d),
                   int(d.get("tokenizer_model_max_length") or llm.max_position_embeddings))

    @property
    def tokens_per_frame(self) -> int:
        return (self.vision.image_size // self.vision.patch_size // self.pool_stride) ** 2


def pool_frames(x: torch.Tensor, grid: int, stride: int) -> torch.Tensor:
    """Average-pool each frame's `grid` x `grid` tokens [F, grid^2, C] with `stride`; row-major out."""
    f, _, c = x.shape
    x = F.avg_pool2d(x.view(f, grid, grid, c).permute(0, 3, 1, 2), stride)
    return x.permute(0, 2, 3, 1).reshape(f, -1, c)


class VideoXLModel(nn.Module):
    """The weights: `vision_tower`, `projector`, `llm` (release names differ only by prefix, see below)."""

    def __init__(self, config: VideoXLConfig):
        super().__init__()
        self.config = config
        self.vision_tower = ClipTower(config.vision, config.select_layer)
        hidden = config.llm.hidden_size
        self.projector = nn.Sequential(nn.Linear(config.mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden))
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

    # ------------------------------------------------------------------------------ vision side

    def encode_frames(self, pixels: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """Pixels [F, 3, S, S] -> visual tokens [F, tokens_per_frame, hidden] (projector *before* pooling)."""
        feats = self.vision_tower(pixels)
        projected = self.projector(feats)
        pooled = pool_frames(projected, self.vision_tower.grid, self.config.pool_stride)
        if trace is not None:
            trace.update(clip_features=feats, projector_out=projected, pooled_features=pooled)
        return pooled

    # ------------------------------------------------------------------------------ LLM side

    def prefill_video(self, prefix: torch.Tensor, visual: torch.Tensor, cache: KVCache, plan: BeaconPlan | None,
                      trace: list | None = None) -> None:
        """Cache the prompt prefix [B, S, H] and the video [B, N, H] that follows it.

        The prefix is one uncompressed step (the release's "sink"). Each window of `plan` is then one step:
        a zero tensor with the visual rows in order and the VST embedding at the plan's VST rows, the VSTs
        routed through the beacon q/k/v, and only their keys/values kept, at compact positions. Without a
        plan the video is read uncompressed. `trace` collects every step's final-norm output."""
        llm = self.llm
        if plan is None:
            self._step(torch.cat([prefix, visual], dim=1), cache, Step(), trace)
            return
        if prefix.shape[1]:
            self._step(prefix, cache, Step(), trace)
        vst = llm.model.beacon_embed_tokens.weight[0].to(visual.dtype)
        b, _, h = visual.shape
        for w in plan.windows:
            if not w.num_vst:  # nothing of this window would stay in the cache
                continue
            mask = w.vst_mask(visual.device)
            x = visual.new_zeros(b, w.size, h)
            x[:, ~mask] = visual[:, w.start : w.start + w.length]
            x[:, mask] = vst
            self._step(x, cache, Step(beacon_mask=mask, keep=mask.nonzero().squeeze(1)), trace)

    def extend_text(self, embeds: torch.Tensor, cache: KVCache, trace: list | None = None) -> torch.Tensor:
        """Feed text [B, T, H] (T >= 1) uncompressed, `beacon_window` rows per step; the last row's hidden [B, H]."""
        window = self.config.beacon.window
        for start in range(0, embeds.shape[1], window):
            hidden = self._step(embeds[:, start : start + window], cache, Step(), trace)
        return hidden[:, -1]

    def _step(self, x: torch.Tensor, cache: KVCache, step: Step, trace: list | None) -> torch.Tensor:
        hidden = self.llm(x, cache, step=step).hidden
        if trace is not None:
            trace.append(hidden)
        return hidden


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
            f"compress more (e.g. --set beacon_ratio=[16])")


class VideoXL(VideoLLM):
    family = FAMILY
    default_generation = {"do_sample": False}  # the official evaluations decode greedily
    frames_per_chunk = 8  # CLIP + projector + pooling run on this many frames at a time

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = ClipProcessor(self.config.vision.image_size, self.config.vision.image_size)

    @property
    def compressor(self) -> BeaconCompressor:
        return BeaconCompressor(self.config.beacon)

    @property
    def compressors(self) -> list:
        return [self.compressor]

    def context_limit(self) -> int:
        return self.config.max_length

    def visual_token_count(self, plan: SamplingPlan) -> int:
        return self.config.tokens_per_frame * len(plan)

    # ------------------------------------------------------------------------------ frames -> tokens

    def sampling_plan(self, video: Video, max_frames: int | None = None, fps: float | None = None,
                      num_frames: int | None = None, timestamps: list[float] | None = None,
                      start: float | None = None, end: float | None = None) -> SamplingPlan:
        """Video-XL samples `np.linspace(0, T-1, N, dtype=int)`: N = `num_frames`, else `max_frames` (128)
        capped at the frame count, so a short clip is read frame by frame rather than with repeats.
        A still image is a one-frame video (the release's anyres image path is not reproduced)."""
        if video.is_image:
            return SamplingPlan.image()
        first, count = trim(video, start, end)
        if timestamps:
            return timestamps_plan(count, video.fps, [t - (start or 0) for t in timestamps], first)
        if num_frames:
            return linspace_plan(count, video.fps, num_frames, first)
        if fps:
            return fps_plan(count, video.fps, fps, max_frames or 0, first)
        return linspace_plan(count, video.fps, min(max_frames or DEFAULT_FRAMES, count), first)

    @torch.no_grad()
    def encode(self, video: Video, plan: SamplingPlan, progress: bool = False) -> VisualTokens:
        """Decode -> preprocess -> CLIP -> projector -> pooling, `frames_per_chunk` frames at a time.

        Host memory holds one chunk of frames (and of CLIP activations) plus the pooled tokens, whatever the
        video's length; chunking changes no number (each frame is encoded independently)."""
        timer = Timer()
        per_frame = self.config.tokens_per_frame
        tokens = torch.empty(len(plan) * per_frame, self.config.llm.hidden_size, device=self.device, dtype=self.dtype)
        done = 0
        with progress_bar(len(plan), "encoding frames", progress) as bar:
            for batch in batched(video.frames(plan.indices), self.frames_per_chunk, timer):
                with timer("decode"):
                    pixels = self.processor(batch).to(self.device, self.dtype)
                with timer("encode"):
                    out = self.model.encode_frames(pixels).flatten(0, 1)
                tokens[done : done + out.shape[0]] = out
                done += out.shape[0]
                bar.update(len(batch))
        return VisualTokens(tokens, plan, timer.times)

    def user_message(self, question: str, plan: SamplingPlan) -> str:
        return f"<image>\n{question}"

    # ------------------------------------------------------------------------------ prompt -> cache

    def beacon_plan(self, num_visual: int) -> BeaconPlan | None:
        """The window plan for `num_visual` tokens (None when compression is off). Fresh RNG every call."""
        return self.compressor.plan(num_visual) if self.config.beacon.enabled else None

    def prefill_video(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> None:
        if not ids or ids[-1] != IMAGE_TOKEN_INDEX or ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise InputError("prefill_video needs prompt ids that end with the one <image> placeholder")
        llm = self.model.llm
        prefix = llm.embed(torch.tensor([ids[:-1]], device=self.device, dtype=torch.long))
        plan = self.beacon_plan(visual.shape[0])
        kept = plan.num_vst if plan is not None else visual.shape[0]
        # allocate the cache once for the whole prompt and the answer (the plan says how much stays)
        cache.reserve(kept + self.config.beacon.window + self.generation.max_new_tokens)
        self.model.prefill_video(prefix, visual[None].to(prefix.dtype), cache, plan)
        cache.reserve(self.generation.max_new_tokens)

    def extend(self, ids: list[int], cache: KVCache) -> torch.Tensor:
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
        return BeaconBudget(**same, positions=plan.peak_rows(text_tokens), window_rows=self.config.beacon.window,
                            kv_per_frame=plan.num_vst / num_frames if num_frames else 0.0)

    def memory_report(self, num_frames: int) -> dict[str, Any]:
        """What the LLM caches for `num_frames` frames, uncompressed and at ratios 2/4/8/16 (`longvid info`).

        Text tokens are left out: they cost the same in every row."""
        n = num_frames * self.config.tokens_per_frame
        per_token = self.config.llm.num_hidden_layers * self.kv_bytes_per_token()
        rows = []
        for ratio in (2, 4, 8, 16):
            plan = BeaconCompressor(replace(self.config.beacon, ratios=[ratio])).plan(n)
            rows.append({"ratio": ratio, "kv_tokens_per_window": plan.windows[0].num_vst if plan.windows else 0,
                         "kv_tokens": plan.num_vst, "kv_bytes": plan.num_vst * per_token})
        kept = self.compressor.kv_tokens(n, 1)[0]
        return {"frames": num_frames, "visual_tokens": n, "window": self.config.beacon.window,
                "windows": -(-n // self.config.beacon.window), "kv_bytes_per_token": per_token,
                "uncompressed": {"kv_tokens": n, "kv_bytes": n * per_token},
                "configured": {"policy": self.compressor.describe(), "kv_tokens": kept, "kv_bytes": kept * per_token},
                "ratios": rows}


# ---------------------------------------------------------------------------------------------- tiny


def tiny_video_xl_config(vocab_size: int = 512, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                         intermediate: int = 128, image_size: int = 112, patch: int = 14, vision_dim: int = 48,
                         vision_layers: int = 3, vision_heads: int = 4, window: int = 80,
                         ratios: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    """A config.json with every key of the released Video-XL config, at tiny sizes (tower in parity_vision_tower)."""
    specials = vocab_size - 3  # <|endoftext|>, <|im_start|>, <|im_end|> (longvid.tiny's tokenizer)
    cfg = {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen", "vocab_size": vocab_size,
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_window_layers": layers,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
        "max_position_embeddings": 32768, "sliding_window": 131072, "use_sliding_window": False,
        "tie_word_embeddings": False, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        "torch_dtype": "float32", "bos_token_id": specials, "eos_token_id": specials + 2,
        "beacon_window": window, "beacon_stride": window, "beacon_attn": "full-coverage", "beacon_attend_prev": True,
        "beacon_sink_size": 0, "beacon_ratio": ratios or [2, 4, 8], "beacon_ratio_mix": "step-random",
        "beacon_param": ["q", "k", "v"], "beacon_pos": "interleave", "beacon_parallel_window": 1,
        "beacon_embed_init": "eos", "beacon_accum": True, "enable_beacon": True,
        "mm_vision_tower": "clip-vit-large-patch14-336", "mm_vision_select_layer": -1,
        "mm_vision_select_feature": "patch", "mm_hidden_size": vision_dim, "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": "spatial_pool", "mm_spatial_pool_mode": "average", "mm_spatial_pool_stride": 2,
        "mm_spatial_pool_out_channels": vision_dim, "mm_patch_merge_type": "unires", "image_aspect_ratio": "anyres",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "unfreeze_mm_vision_tower": True,
        "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right",
        "parity_vision_tower": {"hidden_size": vision_dim, "intermediate_size": 4 * vision_dim,
                                "num_hidden_layers": vision_layers, "num_attention_heads": vision_heads,
                                "image_size": image_size, "patch_size": patch, "num_channels": 3,
                                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": vision_dim},
    }
    cfg.update(extra)
    return cfg


def make_tiny_video_xl(folder: str | Path, seed: int = 0, **config: Any) -> Path:
    """A random tiny Video-XL checkpoint in the released format (config.json, safetensors, tokenizer)."""
    from ..tiny import make_checkpoint

    return make_checkpoint(folder, tiny_video_xl_config(**config), seed=seed)
