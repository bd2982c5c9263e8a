"""Chat about one video, encoding it once.

`model.session(video)` decodes and encodes the video once (or finds its tokens in the feature cache),
then `session.ask(question)` any number of times, keeping the history in the official multi-turn
format. When the compression does not depend on the question (clip-level ToMe, `uniform` in-LLM
dropping, Video-XL's summary tokens) the LLM prefill of system prompt + video is also done once: each
question crops the KV cache back to that prefix and feeds only the text after it, which is exactly
what a fresh call does after its own video prefill, so answers are identical. With question-dependent
ranking (`attention`) the prefill is recomputed from the cached visual tokens.

`FeatureCache` keeps encoded videos in memory (LRU) and, opt-in, on disk in the `longvid encode`
format, keyed by the video's content hash + the sampling settings + the model's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .features import file_hash, load_features, save_features
from .generation import generate
from .llm import KVCache
from .models.base import Answer, Timer, VideoLLM, VisualTokens
from .prompt import IMAGE_TOKEN_INDEX
from .video import Video


def content_key(video) -> str | None:
    """A hash of what the video *is* (file bytes, array bytes, folder files); None if unknown."""
    if isinstance(video, np.ndarray):
        return hashlib.blake2b(np.ascontiguousarray(video).tobytes(), digest_size=16).hexdigest()
    if isinstance(video, Video):
        video = video.source
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_file():
            return file_hash(path)
        if path.is_dir():
            h = hashlib.blake2b(digest_size=16)
            for p in sorted(path.iterdir()):
                if p.is_file():
                    h.update(p.name.encode() + file_hash(p).encode())
            return h.hexdigest()
    return None


class FeatureCache:
    """Encoded videos by (content, sampling, model): an in-memory LRU plus an optional folder."""

    def __init__(self, folder: str | os.PathLike | None = None, max_items: int = 8):
        self.folder = Path(folder) if folder else None
        self.max_items = max_items
        self._memory: OrderedDict[str, VisualTokens] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def key(self, model: VideoLLM, content: str, sampling: dict, fps: float) -> str:
        settings = json.dumps({"sampling": sampling, "fps": fps}, sort_keys=True, default=str)
        return hashlib.sha256(f"{content}|{settings}|{model.fingerprint()}".encode()).hexdigest()[:32]

    def get(self, key: str, model: VideoLLM) -> VisualTokens | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.hits += 1
                return self._memory[key]
        if self.folder is not None and (self.folder / f"{key}.safetensors").is_file():
            visual = load_features(self.folder / f"{key}.safetensors", model)
            self.put(key, visual, model, write=False)
            self.hits += 1
            return visual
        self.misses += 1
        return None

    def put(self, key: str, visual: VisualTokens, model: VideoLLM, write: bool = True, source: str | None = None):
        with self._lock:
            self._memory[key] = visual
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)
        if write and self.folder is not None:
            save_features(self.folder / f"{key}.safetensors", visual, model, source=source)

    def encode(self, model: VideoLLM, video, input_fps: float | None = None, progress: bool = False,
               **sampling) -> tuple[VisualTokens, bool]:
        """(visual tokens, cache hit?) for `video`, encoding it only if it is not cached."""
        source = model.open(video, input_fps)
        content = content_key(video if isinstance(video, np.ndarray) else source)
        key = self.key(model, content, sampling, source.fps) if content else None
        if key is not None and (hit := self.get(key, model)) is not None:
            return hit, True
        plan = model.sampling_plan(source, **sampling)
        model.plan_budget(plan)  # refuse before any heavy work
        visual = model.encode(source, plan, progress=progress)
        if key is not None:
            self.put(key, visual, model, source=str(source.source))
        return visual, False


@dataclass
class SessionStats:
    encodes: int = 0  # times the video was decoded and encoded (0 when the feature cache had it)
    video_prefills: int = 0  # LLM prefills of system prompt + video
    turns: int = 0
    cache_hit: bool = False
    encode_timings: dict[str, float] = field(default_factory=dict)


class ChatSession:
    """A multi-turn conversation about one encoded video."""

    def __init__(self, model: VideoLLM, visual: VisualTokens, system: str | None = None, cache_hit: bool = False):
        self.model = model
        self.visual = visual
        self.system = system
        self.history: list[tuple[str, str]] = []
        self.stats = SessionStats(encodes=0 if cache_hit else 1, cache_hit=cache_hit,
                                  encode_timings=dict(visual.timings))
        self._cache: KVCache | None = None
        self._prefix: tuple[list[int], list[int]] | None = None  # (prompt ids through the video, cache lengths)

    def reset(self) -> None:
        """Forget the conversation (the encoded video and its prefill stay)."""
        self.history.clear()

    @torch.no_grad()
    def ask(self, question: str, max_new_tokens: int | None = None, gen: dict | None = None,
            on_token: Callable[[int], None] | None = None) -> Answer:
        m, timer = self.model, Timer()
        cfg = m.generation_config(max_new_tokens, gen)
        ids = m.prompt_ids(m.conversation(question, self.visual.plan, self.history, self.system))
        n_vis = self.visual.tokens.shape[0]
        budget = m.check_budget(len(ids), n_vis, self.visual.num_frames)
        cfg = m.cap_new_tokens(cfg, max(budget.kv_tokens_per_layer))
        tokens = self.visual.tokens.to(m.device, m.dtype)
        with timer("prefill"):
            if m.question_dependent:  # what is kept depends on this question: recompute from the tokens
                cache = m.new_cache()
                logits = m.prefill_full(ids, tokens, cache)
                self.stats.video_prefills += 1
            else:
                cache = self._video_prefix(ids, tokens)
                logits = m.extend(ids[ids.index(IMAGE_TOKEN_INDEX) + 1 :], cache)
        cache.reserve(cfg.max_new_tokens)
        with timer("generate"):
            result = generate(logits, m.step_fn(cache), cfg, m.stop_ids, on_token)
        answer = m._answer(result, self.visual, len(ids) - 1 + n_vis, timer)
        answer.timings.update({k: 0.0 for k in ("decode", "encode") if self.stats.turns or self.stats.cache_hit})
        self.history.append((question, answer.text))
        self.stats.turns += 1
        return answer

    def _video_prefix(self, ids: list[int], tokens: torch.Tensor) -> KVCache:
        """The KV cache holding exactly system prompt + video, computed once per session."""
        cut = ids.index(IMAGE_TOKEN_INDEX) + 1
        if self._prefix is None or self._prefix[0] != ids[:cut]:
            self._cache = self.model.new_cache()
            self.model.prefill_video(ids[:cut], tokens, self._cache)
            self._prefix = (ids[:cut], self._cache.lengths.copy())
            self.stats.video_prefills += 1
        else:
            self._cache.crop(self._prefix[1])
        return self._cache

    def info(self) -> dict:
        plan = self.visual.plan
        return {"frames": len(plan), "visual_tokens": int(self.visual.tokens.shape[0]), "turns": self.stats.turns,
                "history": len(self.history), "video_prefills": self.stats.video_prefills,
                "encodes": self.stats.encodes, "feature_cache_hit": self.stats.cache_hit,
                "kv_cache_bytes": self._cache.nbytes() if self._cache is not None else 0,
                "question_dependent_compression": self.model.question_dependent,
                "duration_s": plan.duration, "encode_timings": self.stats.encode_timings}
