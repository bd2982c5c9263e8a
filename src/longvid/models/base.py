"""What every model family shares, and the small contract a family fills in.

A family (VideoChat-Flash, Video-XL) supplies only what differs:

* its sampling plans: `default_plan`, `exact_plan` (N frames) and `frames_multiple` (clip length);
* how pixels become visual tokens: `processor` + `encode_pixels`, and `visual_token_count`;
* how the prompt embeds them: `user_message` (where `<image>` goes, any time message);
* how prefill compresses: `prefill` (prompt ids with one `<image>` -> KV cache + logits), `compressors`,
  `question_dependent`.

The rest is here, once: the plan dispatch (`sampling_plan`), the encode loop (`encode_video`), prompt
ids, the token budget, the next-token step (`decode_step`), the release key names (`ReleaseKeys`) and
the fingerprint of what turns pixels into tokens. The route from a video to an answer (plan -> budget
-> encode -> prefill -> generate) is pipeline.py; `ask`, `answer` and `session` below only enter it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..budget import TokenBudget
from ..checkpoint import weights_digest
from ..errors import InputError
from ..generation import GenerationConfig
from ..llm import KVCache
from ..options import GenerationOptions, SamplingOptions
from ..outputs import Answer, VisualTokens
from ..pipeline import Pipeline
from ..prompt import IMAGE_TOKEN_INDEX, Conversation, tokenize_with_image
from ..session import ChatSession
from ..timing import Timer, batched, progress_bar
from ..video import SamplingPlan, Video, fps_plan, open_video, timestamps_plan, trim


class ReleaseKeys:
    """Our parameter names <-> the release's, as one prefix table per family (`release_prefixes`, ours first)."""

    release_prefixes: dict[str, str] = {}

    @classmethod
    def from_release_key(cls, key: str) -> str:
        return _swap_prefix(key, [(theirs, ours) for ours, theirs in cls.release_prefixes.items()])

    @classmethod
    def to_release_key(cls, key: str) -> str:
        return _swap_prefix(key, list(cls.release_prefixes.items()))


def _swap_prefix(key: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:  # in table order: the catch-all "" prefix comes last
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def release_state(module: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`state` (default: the module's) under the released key names; a tied `lm_head` is stored once."""
    llm = getattr(module, "llm", None)
    tied = llm is not None and llm.config.tie_word_embeddings
    state = module.state_dict() if state is None else state
    return {module.to_release_key(k): v for k, v in state.items() if not (tied and k == "llm.lm_head.weight")}


class VideoLLM:
    """Base class of the user-facing model objects returned by `longvid.load`."""

    family = "base"
    default_generation: dict[str, Any] = {}
    frames_multiple = 1  # plans are padded to a multiple of this many frames (the clip length)
    encode_batch = 8  # frames decoded and encoded per step (host memory holds one batch of frames)
    # config.json keys that only change the LLM side: they leave cached visual tokens valid
    llm_side_keys = (
        "mm_llm_compress",
        "llm_compress",
        "llm_image_token",
        "tokenizer_model_max_length",
        "beacon",
        "enable_beacon",
        "use_cache",
        "rope_scaling",
        "max_position_embeddings",
    )

    def __init__(
        self, model: torch.nn.Module, tokenizer, generation: GenerationConfig, name: str, folder: Path | None = None
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.generation = generation.updated(self.default_generation)
        self.name = name
        self.folder = folder
        self.stop_ids = set(self.generation.eos_token_id)
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0 and im_end != tokenizer.unk_token_id:
            self.stop_ids.add(im_end)
        self._fingerprint: str | None = None

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---------------------------------------------------------------- what a family supplies

    def default_plan(self, count: int, fps: float, max_frames: int | None, first: int) -> SamplingPlan:
        """The family's own sampler over `count` frames starting at `first`."""
        raise NotImplementedError

    def exact_plan(self, count: int, fps: float, num_frames: int, first: int) -> SamplingPlan:
        """Exactly `num_frames` frames spread over the range."""
        raise NotImplementedError

    def visual_token_count(self, plan: SamplingPlan) -> int:
        """Visual tokens this plan will put into the LLM (known before any decoding)."""
        raise NotImplementedError

    def pixels(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Frames [H, W, 3] uint8 -> the vision tower's input [F, 3, S, S] on the model's device."""
        return self.processor(frames).to(self.device, self.dtype)

    def encode_pixels(self, pixels: torch.Tensor, plan: SamplingPlan) -> torch.Tensor:
        """Pixels of whole clips [F, 3, S, S] -> LLM-space visual tokens [n, hidden]."""
        raise NotImplementedError

    def user_message(self, question: str, plan: SamplingPlan) -> str:
        raise NotImplementedError

    def prefill(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> torch.Tensor | None:
        """Feed prompt `ids` (one IMAGE_TOKEN_INDEX, where `visual` [N, hidden] goes) into `cache`; the last
        position's logits [V], or None when `ids` end at the video (a chat session's reusable prefix)."""
        raise NotImplementedError

    @property
    def question_dependent(self) -> bool:
        """True if what the LLM keeps of the video depends on the text after it (no KV prefix reuse)."""
        return False

    @property
    def compressors(self) -> list:
        """The `Compressor`s this model applies (see compress/base.py)."""
        return []

    def context_limit(self) -> int:
        return int(self.config.llm.max_position_embeddings)

    # ---------------------------------------------------------------- shared

    def open(self, video, input_fps: float | None = None) -> Video:
        return open_video(video, fps=input_fps)

    def sampling_plan(self, video: Video, sampling: SamplingOptions | None = None, **given: Any) -> SamplingPlan:
        """Which frames of `video` to read: timestamps, else N frames, else F per second, else the default."""
        s = SamplingOptions.of(sampling, **given)
        if video.is_image:
            return SamplingPlan.image()
        first, count = trim(video, s.start, s.end)
        if s.timestamps:
            plan = timestamps_plan(count, video.fps, [t - (s.start or 0) for t in s.timestamps], first)
        elif s.num_frames:
            plan = self.exact_plan(count, video.fps, s.num_frames, first)
        elif s.fps:
            plan = fps_plan(count, video.fps, s.fps, s.max_frames or 0, first)
        else:
            plan = self.default_plan(count, video.fps, s.max_frames, first)
        return plan.padded_to_multiple(self.frames_multiple)

    @torch.no_grad()
    def encode_video(
        self, video: Video, plan: SamplingPlan, progress: bool = False, batch_frames: int | None = None
    ) -> VisualTokens:
        """Decode -> preprocess -> vision tower -> projector (-> compression), `batch_frames` frames at a time.

        Host memory holds one batch of frames plus the visual tokens, whatever the video's length; the
        batch size changes no number (clips are encoded independently)."""
        timer = Timer()
        step = max(batch_frames or self.encode_batch, 1)
        step += -step % self.frames_multiple  # whole clips only
        tokens = torch.empty(
            self.visual_token_count(plan), self.config.llm.hidden_size, device=self.device, dtype=self.dtype
        )
        done = 0
        with progress_bar(len(plan), "encoding", progress) as bar:
            for batch in batched(video.frames(plan.indices), step, timer):
                with timer("decode"):
                    pixels = self.pixels(batch)
                with timer("encode"):
                    out = self.encode_pixels(pixels, plan)
                tokens[done : done + len(out)] = out
                done += len(out)
                bar.update(len(batch))
        return VisualTokens(tokens, plan, timer.times)

    def conversation(self, question: str, plan: SamplingPlan, history=(), system: str | None = None) -> Conversation:
        conv = Conversation() if system is None else Conversation(system=system)
        for i, (q, a) in enumerate(history):
            conv.add("user", self.user_message(q, plan) if i == 0 else q)
            conv.add("assistant", a)
        conv.add("user", self.user_message(question, plan) if not history else question)
        return conv

    def prompt_ids(self, conv: Conversation) -> list[int]:
        text = conv.render()
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the text is not valid Unicode (it holds a lone surrogate)") from None
        ids = tokenize_with_image(self.tokenizer, text)
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise InputError("the prompt must contain exactly one <image> placeholder")
        return ids

    def decode_step(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Feed text `ids` after what `cache` holds; the last position's logits [V]."""
        if not ids:
            raise InputError("no text to feed after the video")
        llm = self.model.llm
        x = llm.embed(torch.tensor([ids], device=self.device))
        return llm.logits(llm(x, cache).hidden[:, -1])[0]

    def kv_bytes_per_token(self) -> int:
        llm = self.config.llm
        return 2 * llm.num_key_value_heads * llm.head_dim * torch.finfo(self.dtype).bits // 8

    def budget(self, text_tokens: int, num_visual: int, num_frames: int = 0) -> TokenBudget:
        """Token and KV-cache budget of a prompt with `text_tokens` text and `num_visual` visual tokens."""
        layers = self.config.llm.num_hidden_layers
        kept = [num_visual] * layers
        for comp in self.compressors:
            kept = [min(a, b) for a, b in zip(kept, comp.kv_tokens(num_visual, layers))]
        per_layer = [text_tokens + k for k in kept]
        return TokenBudget(
            visual_tokens=num_visual,
            text_tokens=text_tokens,
            context_limit=self.context_limit(),
            kv_tokens_per_layer=per_layer,
            kv_bytes=sum(per_layer) * self.kv_bytes_per_token(),
            tokens_per_frame=num_visual / num_frames if num_frames else 0.0,
        )

    def fingerprint(self) -> str:
        """Identifies what turns pixels into visual tokens: the config minus LLM-side keys, a hash of the
        weights' contents (two checkpoints of one shape never match), the dtype and the family."""
        if self._fingerprint is None:
            cfg = {k: v for k, v in self.config.raw.items() if not k.startswith(self.llm_side_keys)}
            blob = json.dumps(
                {"config": cfg, "weights": self._weights_digest(), "family": self.family, "dtype": str(self.dtype)},
                sort_keys=True,
                default=str,
            )
            self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fingerprint

    def _weights_digest(self) -> str:
        if self.folder is not None:
            return weights_digest(Path(self.folder))
        h = hashlib.blake2b(digest_size=16)  # built in memory: hash the parameters themselves
        for name, value in sorted(self.model.state_dict().items()):
            h.update(name.encode() + value.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()

    def new_cache(self) -> KVCache:
        return KVCache(self.config.llm.num_hidden_layers)

    # ---------------------------------------------------------------- the pipeline (pipeline.py)

    def ask(
        self,
        video,
        question: str,
        *,
        max_new_tokens: int | None = None,
        gen: GenerationOptions | dict | None = None,
        system: str | None = None,
        progress: bool = False,
        on_token: Callable[[int], None] | None = None,
        cache=None,
        **sampling,
    ) -> Answer:
        """Answer `question` about `video` (a path, an array [T,H,W,3], a `Video` or `VisualTokens`);
        `sampling`: the fields of `SamplingOptions` (max_frames, fps, num_frames, start, end, input_fps, ...)."""
        answer, _ = Pipeline(self, cache).ask(
            video,
            question,
            SamplingOptions.of(sampling),
            system=system,
            gen=GenerationOptions.of(gen, max_new_tokens=max_new_tokens),
            on_token=on_token,
            progress=progress,
        )
        return answer

    def answer(
        self,
        visual: VisualTokens,
        question: str,
        history=(),
        system: str | None = None,
        max_new_tokens: int | None = None,
        gen: GenerationOptions | dict | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> Answer:
        """Answer a question about already-encoded visual tokens, after `history` (a fresh prefill)."""
        answer, _ = Pipeline(self).ask(
            visual,
            question,
            history=history,
            system=system,
            gen=GenerationOptions.of(gen, max_new_tokens=max_new_tokens),
            on_token=on_token,
        )
        return answer

    def session(
        self, video, *, system: str | None = None, cache=None, progress: bool = False, **sampling
    ) -> ChatSession:
        """A `ChatSession` about `video`: encoded once (or taken from `cache`, a `FeatureCache`)."""
        return Pipeline(self, cache).session(video, SamplingOptions.of(sampling), system, progress)
