"""What every model family shares: video in, answer out.

A family (VideoChat-Flash, Video-XL) provides four things: a sampling plan, a visual encoder
(frames -> tokens in LLM space), the first user message around `<image>`, and a prefill that turns
prompt ids + visual tokens into the next-token logits and a KV cache. `ask` strings them together:

    open video -> plan frames -> check the token budget -> decode + encode -> prompt -> prefill -> generate
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import BudgetError, InputError
from ..generation import GenerationConfig, generate
from ..llm import KVCache
from ..prompt import IMAGE_TOKEN_INDEX, Conversation, decode_answer, tokenize_with_image
from ..video import SamplingPlan, Video, open_video


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    finish_reason: str
    num_frames: int
    num_visual_tokens: int
    prompt_tokens: int
    plan: SamplingPlan | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plan"] = self.plan.to_dict() if self.plan else None
        return d


@dataclass
class VisualTokens:
    """A video after the vision encoder and projector: the LLM-space tokens plus where they came from."""

    tokens: torch.Tensor  # [num_visual, hidden]
    plan: SamplingPlan
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.plan)


@dataclass
class TokenBudget:
    """What a request costs before any heavy work: tokens, context, KV-cache bytes."""

    visual_tokens: int
    text_tokens: int
    context_limit: int
    kv_tokens_per_layer: list[int]  # tokens each LLM layer caches (compression makes them differ)
    kv_bytes: int
    tokens_per_frame: float = 0.0

    @property
    def context_tokens(self) -> int:
        return self.visual_tokens + self.text_tokens

    @property
    def fits(self) -> bool:
        return self.context_tokens <= self.context_limit

    def max_frames(self) -> int:
        """How many frames would fit beside the same text."""
        room = self.context_limit - self.text_tokens
        return int(room // self.tokens_per_frame) if self.tokens_per_frame else 0

    def check(self) -> None:
        if self.fits:
            return
        hint = f"sample at most {self.max_frames()} frames (--max-frames / --fps)" if self.max_frames() > 0 else \
            "shorten the text"
        raise BudgetError(
            f"{self.visual_tokens} visual + {self.text_tokens} text tokens = {self.context_tokens} exceed the model's "
            f"context of {self.context_limit}; {hint}, enable compression (--set ...), or raise the limit "
            f"with --set (e.g. tokenizer_model_max_length)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(context_tokens=self.context_tokens, fits=self.fits)
        return d


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = timer.times.get(name, 0.0) + time.perf_counter() - self.t

        return _T()


def batched(frames, size: int, timer: Timer | None = None):
    """Lists of up to `size` items from an iterator (time spent pulling them counts as "decode")."""
    frames = iter(frames)
    while True:
        if timer is not None:
            with timer("decode"):
                batch = list(itertools.islice(frames, size))
        else:
            batch = list(itertools.islice(frames, size))
        if not batch:
            return
        yield batch


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, leave=False, dynamic_ncols=True)


class VideoLLM:
    """Base class of the user-facing model objects returned by `longvid.load`."""

    family = "base"
    default_generation: dict[str, Any] = {}

    def __init__(self, model: torch.nn.Module, tokenizer, generation: GenerationConfig, name: str,
                 folder: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.generation = generation.updated(self.default_generation)
        self.name = name
        self.folder = folder
        self.stop_ids = set(self.generation.eos_token_id)
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0 and im_end != tokenizer.unk_token_id:
            self.stop_ids.add(im_end)

    # ---------------------------------------------------------------- family-specific
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def sampling_plan(self, video: Video, **opts) -> SamplingPlan:
        raise NotImplementedError

    def visual_token_count(self, plan: SamplingPlan) -> int:
        """Visual tokens this plan will put into the LLM (known before any decoding)."""
        raise NotImplementedError

    def encode(self, video: Video, plan: SamplingPlan, progress: bool = False) -> VisualTokens:
        raise NotImplementedError

    def user_message(self, question: str, plan: SamplingPlan) -> str:
        raise NotImplementedError

    def prefill_video(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> None:
        """Fill `cache` with the prompt up to and including the video (`ids` ends with IMAGE_TOKEN_INDEX)."""
        raise NotImplementedError

    @property
    def question_dependent(self) -> bool:
        """True if what the LLM keeps of the video depends on the text after it (no KV prefix reuse)."""
        return False

    def prefill_full(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One forward over the whole prompt, for question-dependent compression; last-position logits."""
        raise NotImplementedError

    def extend(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Feed text `ids` after what `cache` holds; return the last position's logits [V]."""
        llm = self.model.llm
        x = llm.embed(torch.tensor([ids], device=self.device))
        return llm.logits(llm(x, cache).hidden[:, -1])[0]

    def prefill(self, ids: list[int], visual: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The whole prompt (ids with one IMAGE_TOKEN_INDEX) -> last-position logits, filling `cache`.

        Done as video prefix + text continuation, exactly what a chat session reuses across questions,
        unless the compression depends on the question."""
        if self.question_dependent:
            return self.prefill_full(ids, visual, cache)
        cut = ids.index(IMAGE_TOKEN_INDEX) + 1
        self.prefill_video(ids[:cut], visual, cache)
        return self.extend(ids[cut:], cache)

    def context_limit(self) -> int:
        return int(self.config.llm.max_position_embeddings)

    # ---------------------------------------------------------------- shared
    def open(self, video, input_fps: float | None = None) -> Video:
        return open_video(video, fps=input_fps)

    def conversation(self, question: str, plan: SamplingPlan, history=(), system: str | None = None) -> Conversation:
        conv = Conversation() if system is None else Conversation(system=system)
        for i, (q, a) in enumerate(history):
            conv.add("user", self.user_message(q, plan) if i == 0 else q)
            conv.add("assistant", a)
        conv.add("user", self.user_message(question, plan) if not history else question)
        return conv

    def prompt_ids(self, conv: Conversation) -> list[int]:
        ids = tokenize_with_image(self.tokenizer, conv.render())
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise InputError("the prompt must contain exactly one <image> placeholder")
        return ids

    @property
    def compressors(self) -> list:
        """The `Compressor`s this model applies (see compress/base.py)."""
        return []

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
        return TokenBudget(num_visual, text_tokens, self.context_limit(), per_layer,
                           sum(per_layer) * self.kv_bytes_per_token(), num_visual / num_frames if num_frames else 0.0)

    def check_budget(self, prompt_tokens: int, num_visual: int, num_frames: int = 0) -> TokenBudget:
        """Refuse (BudgetError, with what to change) instead of silently truncating the prompt."""
        budget = self.budget(prompt_tokens - 1, num_visual, num_frames)
        budget.check()
        return budget

    def plan_budget(self, plan: SamplingPlan, question: str = "", system: str | None = None) -> TokenBudget:
        """Check a sampling plan against the context before decoding a single frame."""
        ids = self.prompt_ids(self.conversation(question, plan, (), system))
        return self.check_budget(len(ids), self.visual_token_count(plan), len(plan))

    def fingerprint(self) -> str:
        """Identifies what turns pixels into visual tokens (config minus LLM-side keys, weight files)."""
        import hashlib
        import json

        llm_side = ("mm_llm_compress", "llm_compress", "llm_image_token", "tokenizer_model_max_length", "beacon",
                    "enable_beacon", "use_cache", "rope_scaling", "max_position_embeddings")
        cfg = {k: v for k, v in self.config.raw.items() if not k.startswith(llm_side)}
        weights = []
        if self.folder is not None:
            weights = sorted((p.name, p.stat().st_size) for p in Path(self.folder).glob("*.safetensors"))
        blob = json.dumps({"config": cfg, "weights": weights, "family": self.family}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def new_cache(self) -> KVCache:
        return KVCache(self.config.llm.num_hidden_layers)

    def step_fn(self, cache: KVCache) -> Callable[[int], torch.Tensor]:
        llm = self.model.llm

        def step(token: int) -> torch.Tensor:
            x = llm.embed(torch.tensor([[token]], device=self.device))
            return llm.logits(llm(x, cache).hidden[:, -1])[0]

        return step

    def generation_config(self, max_new_tokens: int | None = None, gen: dict | None = None) -> GenerationConfig:
        cfg = self.generation.updated(gen or {})
        if max_new_tokens is not None:
            cfg = cfg.updated({"max_new_tokens": max_new_tokens})
        return cfg

    def cap_new_tokens(self, cfg: GenerationConfig, context_tokens: int) -> GenerationConfig:
        """Stop at the context limit instead of running past the trained positions (`context_tokens`:
        positions the prompt occupies in the cache, i.e. the longest layer)."""
        room = self.context_limit() - context_tokens
        return cfg.updated({"max_new_tokens": max(room, 1)}) if cfg.max_new_tokens > room else cfg

    def session(self, video, *, system: str | None = None, cache=None, input_fps: float | None = None,
                progress: bool = False, **sampling):
        """A `ChatSession` about `video`: encoded once (or taken from `cache`, a `FeatureCache`)."""
        from ..session import ChatSession, FeatureCache

        if isinstance(video, VisualTokens):
            return ChatSession(self, video, system)
        visual, hit = (cache or FeatureCache(max_items=1)).encode(self, video, input_fps, progress, **sampling)
        return ChatSession(self, visual, system, cache_hit=hit)

    @torch.no_grad()
    def answer(self, visual: VisualTokens, question: str, history=(), system: str | None = None,
               max_new_tokens: int | None = None, gen: dict | None = None,
               on_token: Callable[[int], None] | None = None, timer: Timer | None = None) -> Answer:
        """Answer a question about already-encoded visual tokens (the part after `encode`)."""
        timer = timer or Timer()
        cfg = self.generation_config(max_new_tokens, gen)
        ids = self.prompt_ids(self.conversation(question, visual.plan, history, system))
        n_vis = visual.tokens.shape[0]
        budget = self.check_budget(len(ids), n_vis, visual.num_frames)
        cfg = self.cap_new_tokens(cfg, max(budget.kv_tokens_per_layer))
        cache = self.new_cache()
        cache.reserve(cfg.max_new_tokens)
        with timer("prefill"):
            logits = self.prefill(ids, visual.tokens.to(self.device, self.dtype), cache)
        with timer("generate"):
            result = generate(logits, self.step_fn(cache), cfg, self.stop_ids, on_token)
        return self._answer(result, visual, len(ids) - 1 + n_vis, timer)

    def _answer(self, result, visual: VisualTokens, prompt_tokens: int, timer: Timer) -> Answer:
        times = dict(visual.timings)
        times.update(timer.times)
        gen_s = times.get("generate", 0.0)
        times["tokens_per_s"] = len(result.token_ids) / gen_s if gen_s > 0 else 0.0
        return Answer(decode_answer(self.tokenizer, result.token_ids), result.token_ids, result.finish_reason,
                      visual.num_frames, visual.tokens.shape[0], prompt_tokens, visual.plan, times)

    def ask(self, video, question: str, *, max_new_tokens: int | None = None, gen: dict | None = None,
            system: str | None = None, input_fps: float | None = None, progress: bool = False,
            on_token: Callable[[int], None] | None = None, **sampling) -> Answer:
        """Answer `question` about `video` (a path, an array [T,H,W,3], or `VisualTokens`)."""
        if isinstance(video, VisualTokens):
            visual = video
        else:
            src = self.open(video, input_fps)
            plan = self.sampling_plan(src, **sampling)
            self.plan_budget(plan, question, system)
            visual = self.encode(src, plan, progress=progress)
        return self.answer(visual, question, system=system, max_new_tokens=max_new_tokens, gen=gen, on_token=on_token)
