"""One chat request on the model thread: the pipeline (pipeline.py), as `longvid ask` runs it.

The pipeline refuses bad requests before any heavy work: the sampling plan (and this server's frame
limit) and the full prompt's token budget are checked before a single frame is decoded. The video goes
through the server's `FeatureCache` with the same keys as `longvid ask --cache-dir` (content hash +
sampling plan + model), so a multi-turn conversation that resends its video, or another client asking
about the same file, skips decoding and encoding.

Text leaves generation through `TextStream` (streaming.py), one delta per token, stop strings cut out.
A stop string ends generation by raising `StopGeneration` from the per-token callback; a client
disconnect and a deadline raise from `control.check()`, which the pipeline also calls between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..features import FeatureCache
from ..generation import StopGeneration
from ..models.base import VideoLLM
from ..options import GenerationOptions
from ..pipeline import Pipeline
from ..streaming import TextStream
from ..video import SamplingPlan
from .media import Media
from .worker import JobControl


@dataclass
class ChatTask:
    """Everything the model thread needs for one request (media already fetched)."""

    media: Media
    question: str
    history: list[tuple[str, str]]
    system: str | None
    sampling: dict[str, Any]
    max_new_tokens: int | None
    gen: dict[str, Any]  # overrides of the checkpoint's generation config
    stop: list[str] = field(default_factory=list)


@dataclass
class ChatOutcome:
    text: str
    finish_reason: str  # "stop" (end of answer or a stop string) or "length"
    completion_tokens: int
    prompt_tokens: int  # text + visual, as the model's context counts them
    visual_tokens: int
    plan: SamplingPlan
    cache_hit: bool
    timings: dict[str, float]


def run_chat(
    model: VideoLLM,
    cache: FeatureCache,
    task: ChatTask,
    control: JobControl,
    frame_limit: int,
    emit: Callable[[str], None] | None = None,
) -> ChatOutcome:
    """Answer `task` on the calling (model) thread; `emit` receives each text delta as it is made."""
    text = TextStream(model.tokenizer, task.stop)

    def on_token(token: int) -> None:
        control.check()
        delta = text.push(token)
        if delta and emit is not None:
            emit(delta)
        if text.stopped:
            raise StopGeneration()

    try:
        answer, hit = Pipeline(model, cache).ask(
            task.media.source,
            task.question,
            task.sampling,
            history=task.history,
            system=task.system,
            gen=GenerationOptions.of(task.gen, max_new_tokens=task.max_new_tokens),
            on_token=on_token,
            frame_limit=frame_limit,
            check=control.check,
        )
    except InputError as e:
        if task.media.temp is None:
            raise
        # a data: or downloaded video lives in a temp file of ours: do not show clients its path
        raise type(e)(str(e).replace(str(task.media.temp), task.media.label)) from None
    tail = text.flush()
    if tail and emit is not None:
        emit(tail)
    return ChatOutcome(
        text=text.text,
        finish_reason=answer.finish_reason,
        completion_tokens=len(text.ids),
        prompt_tokens=answer.prompt_tokens,
        visual_tokens=answer.num_visual_tokens,
        plan=answer.plan,
        cache_hit=hit,
        timings={k: round(float(v), 6) for k, v in answer.timings.items()},
    )
