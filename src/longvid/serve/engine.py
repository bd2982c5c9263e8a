"""One chat request on the model thread: plan, check, encode (or hit the feature cache), generate.

The order refuses bad requests before any heavy work: the sampling plan and the full prompt's token
budget are checked before a single frame is decoded. The video goes through the server's
`FeatureCache` with the same keys as `longvid ask --cache-dir` (content hash + sampling + model), so
a multi-turn conversation that resends its video, or another client asking about the same file,
skips decoding and encoding.

Text leaves generation through `TextStream`, one delta per token: whole characters only (a token
may end inside a UTF-8 sequence), leading whitespace dropped (as the models' own answers are
stripped), and stop strings cut out -- text that might be the start of a stop string is held back
until it is known not to be, so a stop string never reaches a streaming client half-written. Streamed
and non-streamed answers are the same text. A stop string, a client disconnect and a deadline all
end generation by raising from the per-token callback, which `generate` lets through.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..models.base import VideoLLM
from ..session import FeatureCache
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
    gen: dict[str, Any]
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


class _StopFound(Exception):
    """Raised from the token callback to end generation at a stop string."""


class TextStream:
    """Token ids in, text deltas out: whole characters, no leading whitespace, stop strings cut."""

    def __init__(self, tokenizer, stop: list[str] = ()):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] decode to text already taken
        self.text = ""  # the answer so far (up to any stop string)
        self.sent = 0  # characters of `text` handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """The text that token makes safe to show (may be ""); sets `stopped` at a stop string."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            if not self.sent:
                self.text = self.text.lstrip()
        return self._release()

    def flush(self) -> str:
        """What is still held back, once no more tokens will come."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta

    def _release(self) -> str:
        start = max(self.sent - max((len(s) for s in self.stop), default=0), 0)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            return self.flush()
        safe = len(self.text) - self._held_back()
        delta, self.sent = self.text[self.sent:safe], max(safe, self.sent)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of `text` (not yet sent) that begins some stop string."""
        for n in range(min(len(self.text) - self.sent, max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stop):
                return n
        return 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


def run_chat(model: VideoLLM, cache: FeatureCache, task: ChatTask, control: JobControl, frame_limit: int,
             emit: Callable[[str], None] | None = None) -> ChatOutcome:
    """Answer `task` on the calling (model) thread; `emit` receives each text delta as it is made."""
    try:
        ids, visual, hit = _prepare(model, cache, task, control, frame_limit)
    except InputError as e:
        if task.media.temp is None:
            raise
        # a data: or downloaded video lives in a temp file of ours: do not show clients its path
        raise type(e)(str(e).replace(str(task.media.temp), task.media.label)) from None
    control.check()

    text = TextStream(model.tokenizer, task.stop)

    def on_token(token: int) -> None:
        control.check()
        delta = text.push(token)
        if delta and emit is not None:
            emit(delta)
        if text.stopped:
            raise _StopFound()

    started = time.perf_counter()
    try:
        answer = model.answer(visual, task.question, history=task.history, system=task.system,
                              max_new_tokens=task.max_new_tokens, gen=task.gen, on_token=on_token)
        finish, timings = answer.finish_reason, answer.timings
    except _StopFound:
        finish, timings = "stop", {**visual.timings, "answer": time.perf_counter() - started}
    tail = text.flush()
    if tail and emit is not None:
        emit(tail)
    if hit:
        timings.update(decode=0.0, encode=0.0)
    n_vis = int(visual.tokens.shape[0])
    return ChatOutcome(text.text, finish, len(text.ids), len(ids) - 1 + n_vis, n_vis, visual.plan, hit,
                       {k: round(float(v), 6) for k, v in timings.items()})


def _prepare(model: VideoLLM, cache: FeatureCache, task: ChatTask, control: JobControl, frame_limit: int):
    """(prompt ids, visual tokens, cache hit?), refusing too many frames or too long a prompt first."""
    video = model.open(task.media.source)
    try:
        sampling = dict(task.sampling)
        plan = model.sampling_plan(video, **sampling)  # fps_plan never samples faster than the source
        if len(plan) > frame_limit:
            raise InputError(f"the request samples {len(plan)} frames; this server allows at most {frame_limit} "
                             "(lower nframes / fps, or set max_frames)")
        ids = model.prompt_ids(model.conversation(task.question, plan, task.history, task.system))
        model.check_budget(len(ids), model.visual_token_count(plan), len(plan))  # before decoding a frame
        control.check()
        # decoded images are keyed by their pixels, files by their content hash
        source = task.media.source if isinstance(task.media.source, np.ndarray) else video
        visual, hit = cache.encode(model, source, None, False, **sampling)
    finally:
        video.close()
    return ids, visual, hit
