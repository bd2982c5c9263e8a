"""Chat about one video, encoding it once.

`model.session(video)` decodes and encodes the video once (or finds its tokens in the feature cache),
then `session.ask(question)` any number of times, keeping the history in the official multi-turn
format. When the compression does not depend on the question (clip-level ToMe, `uniform` in-LLM
dropping, Video-XL's summary tokens) the LLM prefill of system prompt + video is also done once: each
question rewinds the KV cache to that prefix and feeds only the text after it, which is exactly what
a fresh call does after its own video prefill, so answers are identical. With question-dependent
ranking (`attention`) the prefill is recomputed from the cached visual tokens.

A session is state only (the encoded video, the history, the video prefix); every step runs in the
pipeline (pipeline.py), the same code `model.ask` and the server use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .features import FeatureCache
from .options import GenerationOptions
from .outputs import Answer, VisualTokens

if TYPE_CHECKING:
    from .pipeline import Pipeline, VideoPrefix


@dataclass
class SessionStats:
    encodes: int = 0  # times the video was decoded and encoded (0 when the feature cache had it)
    video_prefills: int = 0  # LLM prefills of system prompt + video
    turns: int = 0
    cache_hit: bool = False
    encode_timings: dict[str, float] = field(default_factory=dict)


class ChatSession:
    """A multi-turn conversation about one encoded video."""

    def __init__(self, pipeline: Pipeline, visual: VisualTokens, system: str | None = None, cache_hit: bool = False):
        self.pipeline = pipeline
        self.model = pipeline.model
        self.visual = visual
        self.system = system
        self.history: list[tuple[str, str]] = []
        self.stats = SessionStats(
            encodes=0 if cache_hit else 1, cache_hit=cache_hit, encode_timings=dict(visual.timings)
        )
        self.prefix: VideoPrefix | None = None  # the KV cache of system prompt + video, once computed

    def reset(self) -> None:
        """Forget the conversation (the encoded video and its prefill stay)."""
        self.history.clear()

    def ask(
        self,
        question: str,
        max_new_tokens: int | None = None,
        gen: GenerationOptions | dict[str, Any] | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> Answer:
        p = self.pipeline
        prompt = p.prompt(self.visual.plan, question, self.history, self.system)
        answer, prefix = p.answer(
            prompt, self.visual, GenerationOptions.of(gen, max_new_tokens=max_new_tokens), on_token, prefix=self.prefix
        )
        if prefix is None or prefix is not self.prefix:
            self.stats.video_prefills += 1
        self.prefix = prefix
        if self.stats.turns or self.stats.cache_hit:
            answer.timings.update(decode=0.0, encode=0.0)
        self.history.append((question, answer.text))
        self.stats.turns += 1
        return answer

    def info(self) -> dict:
        plan = self.visual.plan
        return {
            "frames": len(plan),
            "visual_tokens": self.visual.num_tokens,
            "turns": self.stats.turns,
            "history": len(self.history),
            "video_prefills": self.stats.video_prefills,
            "encodes": self.stats.encodes,
            "feature_cache_hit": self.stats.cache_hit,
            "kv_cache_bytes": self.prefix.cache.nbytes() if self.prefix is not None else 0,
            "question_dependent_compression": self.model.question_dependent,
            "duration_s": plan.duration,
            "encode_timings": self.stats.encode_timings,
        }


__all__ = ["ChatSession", "FeatureCache", "SessionStats"]
