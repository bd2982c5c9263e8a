"""The one route from a video to an answer. `model.ask`, `model.session`, the chat REPL, the server, the
NIAH harness, `longvid info` and `longvid encode` all take it; none strings the steps together itself.

    open the video        Pipeline.open      (video/reader.py)
    plan the frames       Pipeline.plan      (model.sampling_plan: the family's default plan)
    prompt + budget       Pipeline.prompt    the whole prompt is known, so its token budget is checked
                                             once, here, before a single frame is decoded
    frames -> tokens      Pipeline.encode    (feature cache aware; model.encode_video)
    prompt -> KV cache    Pipeline.prefill   (a chat session's system prompt + video prefix is reused
                                             when the compression does not depend on the question)
    generate -> Answer    Pipeline.answer    (generation.py)

The model family (models/base.py and one file per family) supplies only what differs: its plan, how
pixels become visual tokens, how the prompt embeds them and how prefill compresses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import InputError
from .features import FeatureCache, content_key
from .generation import generate
from .llm import KVCache
from .options import GenerationOptions, SamplingOptions
from .outputs import Answer, Prompt, VisualTokens
from .prompt import decode_answer
from .session import ChatSession
from .timing import Timer
from .video import SamplingPlan, Video, open_video

if TYPE_CHECKING:
    from .models.base import VideoLLM

OnToken = Callable[[int], None]


@dataclass
class VideoPrefix:
    """A KV cache holding exactly system prompt + video, and the ids it was made from."""

    ids: list[int]
    cache: KVCache
    lengths: list[int]

    def rewind(self) -> KVCache:
        """The cache cropped back to the prefix (dropping an earlier question and answer)."""
        self.cache.crop(self.lengths)
        return self.cache


class Pipeline:
    """The steps from video to answer for one model, in the order they run (see the module docstring)."""

    def __init__(self, model: VideoLLM, cache: FeatureCache | None = None):
        self.model = model
        self.cache = cache

    # ------------------------------------------------------------------------------ 1. what to look at

    def open(self, video, sampling: SamplingOptions) -> Video:
        return open_video(video, fps=sampling.input_fps)

    def plan(self, video: Video, sampling: SamplingOptions, frame_limit: int | None = None) -> SamplingPlan:
        plan = self.model.sampling_plan(video, sampling)
        if frame_limit is not None and len(plan) > frame_limit:
            raise InputError(
                f"the request samples {len(plan)} frames; this server allows at most {frame_limit} "
                "(lower nframes / fps, or set max_frames)"
            )
        return plan

    # ------------------------------------------------------------------------------ 2. what it costs

    def prompt(
        self, plan: SamplingPlan, question: str = "", history=(), system: str | None = None, check: bool = True
    ) -> Prompt:
        """Token ids of the conversation and their budget; refused (`check`) before any frame is decoded."""
        m = self.model
        ids = m.prompt_ids(m.conversation(question, plan, history, system))
        prompt = Prompt(ids=ids, budget=m.budget(len(ids) - 1, m.visual_token_count(plan), len(plan)))
        return self.check_budget(prompt) if check else prompt

    @staticmethod
    def check_budget(prompt: Prompt) -> Prompt:
        """Refuse (BudgetError, saying what to change) instead of silently truncating the prompt."""
        prompt.budget.check()
        return prompt

    # ------------------------------------------------------------------------------ 3. frames -> tokens

    def encode(
        self, video: Video, plan: SamplingPlan, progress: bool = False, content: str | None = None
    ) -> tuple[VisualTokens, bool]:
        """(visual tokens, feature-cache hit?); `content` identifies the video (default: hashed from `video`)."""
        key = None
        if self.cache is not None:
            content = content or content_key(video)
            key = self.cache.key(self.model, content, plan) if content else None
        if key is not None and (hit := self.cache.get(key, self.model)) is not None:
            return hit, True
        visual = self.model.encode_video(video, plan, progress=progress)
        if key is not None:
            self.cache.put(key, visual, self.model, source=str(video.source))
        return visual, False

    def visual(
        self,
        video,
        sampling: SamplingOptions,
        question: str = "",
        history=(),
        system: str | None = None,
        progress: bool = False,
        frame_limit: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[Prompt, VisualTokens, bool]:
        """Steps 1-3 for a video given as a path, an array or a `Video`: (prompt, visual tokens, cache hit?)."""
        source = self.open(video, sampling)
        try:
            plan = self.plan(source, sampling, frame_limit)
            prompt = self.prompt(plan, question, history, system)
            if check is not None:
                check()
            content = content_key(video) if isinstance(video, np.ndarray) and self.cache is not None else None
            visual, hit = self.encode(source, plan, progress, content)
        finally:
            if source is not video:  # close what was opened here
                source.close()
        return prompt, visual, hit

    # ------------------------------------------------------------------------------ 4. prompt -> KV cache

    def prefill(
        self, prompt: Prompt, visual: VisualTokens, prefix: VideoPrefix | None = None
    ) -> tuple[torch.Tensor, KVCache, VideoPrefix | None]:
        """Last-position logits, the filled cache, and the video prefix used (None: not reusable)."""
        m = self.model
        tokens = visual.tokens.to(m.device, m.dtype)
        if m.question_dependent:  # what is kept of the video depends on this question: the whole prompt at once
            cache = m.new_cache()
            return m.prefill(prompt.ids, tokens, cache), cache, None
        head = prompt.ids[: prompt.video_end]
        if prefix is not None and prefix.ids == head:
            cache = prefix.rewind()
        else:
            cache = m.new_cache()
            m.prefill(head, tokens, cache)
            prefix = VideoPrefix(head, cache, cache.lengths.copy())
        return m.decode_step(prompt.ids[prompt.video_end :], cache), cache, prefix

    # ------------------------------------------------------------------------------ 5. generate -> Answer

    @torch.no_grad()
    def answer(
        self,
        prompt: Prompt,
        visual: VisualTokens,
        gen: GenerationOptions | None = None,
        on_token: OnToken | None = None,
        prefix: VideoPrefix | None = None,
        timer: Timer | None = None,
    ) -> tuple[Answer, VideoPrefix | None]:
        m, timer = self.model, timer or Timer()
        cfg = m.generation.updated((gen or GenerationOptions()).overrides())
        room = m.context_limit() - max(prompt.budget.kv_tokens_per_layer)
        if cfg.max_new_tokens > room:  # stop at the context limit instead of running past the trained positions
            cfg = cfg.updated({"max_new_tokens": max(room, 1)})
        with timer("prefill"):
            logits, cache, prefix = self.prefill(prompt, visual, prefix)
        cache.reserve(cfg.max_new_tokens)
        with timer("generate"):
            result = generate(logits, lambda token: m.decode_step([token], cache), cfg, m.stop_ids, on_token)
        times = {**visual.timings, **timer.times}
        gen_s = times.get("generate", 0.0)
        times["tokens_per_s"] = len(result.token_ids) / gen_s if gen_s > 0 else 0.0
        answer = Answer(
            text=decode_answer(m.tokenizer, result.token_ids),
            token_ids=result.token_ids,
            finish_reason=result.finish_reason,
            num_frames=visual.num_frames,
            num_visual_tokens=visual.num_tokens,
            prompt_tokens=prompt.prompt_tokens,
            plan=visual.plan,
            timings=times,
        )
        return answer, prefix

    @torch.no_grad()
    def continuation_logprob(self, prompt: Prompt, visual: VisualTokens, ids: list[int]) -> tuple[float, bool]:
        """log P(`ids` | prompt + video) and whether greedy decoding would produce exactly `ids`, teacher-forced
        one token at a time (lmms-eval's loglikelihood requests)."""
        logits, cache, _ = self.prefill(prompt, visual)
        cache.reserve(len(ids))
        total, greedy = 0.0, True
        for i, token in enumerate(ids):
            logp = torch.log_softmax(logits.float(), dim=-1)
            total += float(logp[token])
            greedy = greedy and int(logp.argmax()) == token
            if i + 1 < len(ids):
                logits = self.model.decode_step([token], cache)
        return total, greedy

    # ------------------------------------------------------------------------------ all of it

    def ask(
        self,
        video,
        question: str,
        sampling: SamplingOptions | dict[str, Any] | None = None,
        history=(),
        system: str | None = None,
        gen: GenerationOptions | dict[str, Any] | None = None,
        on_token: OnToken | None = None,
        progress: bool = False,
        frame_limit: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[Answer, bool]:
        """(answer, feature-cache hit?) for `question` about `video` (a path, an array, a `Video` or
        `VisualTokens`); `check` runs between steps (a server's cancellation)."""
        gen = GenerationOptions.of(gen)
        if isinstance(video, VisualTokens):
            prompt, visual, hit = self.prompt(video.plan, question, history, system), video, False
        else:
            prompt, visual, hit = self.visual(
                video, SamplingOptions.of(sampling), question, history, system, progress, frame_limit, check
            )
        if check is not None:
            check()
        answer, _ = self.answer(prompt, visual, gen, on_token)
        if hit:  # the frames were neither decoded nor encoded for this answer
            answer.timings.update(decode=0.0, encode=0.0)
        return answer, hit

    def session(
        self,
        video,
        sampling: SamplingOptions | dict[str, Any] | None = None,
        system: str | None = None,
        progress: bool = False,
    ) -> ChatSession:
        """A `ChatSession` about `video`, encoded now (or found in the feature cache)."""
        if isinstance(video, VisualTokens):
            return ChatSession(self, video, system)
        _, visual, hit = self.visual(video, SamplingOptions.of(sampling), system=system, progress=progress)
        return ChatSession(self, visual, system, cache_hit=hit)
