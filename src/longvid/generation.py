"""Token-by-token generation with the semantics of `transformers.generate` (greedy or sampling).

Settings come from the checkpoint's `generation_config.json`, then the model family's defaults (the
official demo's `do_sample=False`), then the user's overrides (`--gen KEY=VALUE`). Logits processing
follows transformers' order: repetition penalty (over the tokens generated so far, because the prompt
is fed as embeddings), then for sampling temperature, top-k and top-p.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .options import MIN_TEMPERATURE


@dataclass
class GenerationConfig:
    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: list[int] = field(default_factory=list)
    seed: int | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> GenerationConfig:
        p = Path(path)
        return cls().updated(json.loads(p.read_text()) if p.is_file() else {})

    def updated(self, overrides: dict[str, Any]) -> GenerationConfig:
        """A copy with `overrides` applied; unknown keys (num_beams, pad_token_id, ...) are ignored."""
        known = {f.name for f in fields(self)}
        values = asdict(self)
        for key, value in overrides.items():
            if key not in known or value is None:
                continue
            if key == "eos_token_id":
                value = [value] if isinstance(value, int) else list(value)
            values[key] = value
        try:
            cfg = GenerationConfig(**values)
            cfg.max_new_tokens = int(cfg.max_new_tokens)
            cfg.temperature, cfg.top_p = float(cfg.temperature), float(cfg.top_p)
            cfg.top_k, cfg.repetition_penalty = int(cfg.top_k), float(cfg.repetition_penalty)
            cfg.do_sample = bool(cfg.do_sample)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad generation setting: {e}") from None
        if cfg.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1")
        if cfg.repetition_penalty <= 0:
            raise ConfigError("repetition_penalty must be positive")
        return cfg

    @property
    def greedy(self) -> bool:
        """Greedy decoding; temperatures below MIN_TEMPERATURE are its limit (dividing by them gives inf/nan)."""
        return not self.do_sample or self.temperature < MIN_TEMPERATURE


class StopGeneration(Exception):
    """Raised from an `on_token` callback to end the answer there (a stop string, a cancelled request)."""


@dataclass
class GenerationResult:
    token_ids: list[int]  # without the stop token
    finish_reason: str  # "stop" or "length"


def process_logits(logits: torch.Tensor, generated: list[int], cfg: GenerationConfig) -> torch.Tensor:
    """Apply repetition penalty and (when sampling) temperature / top-k / top-p to one row [V]."""
    scores = logits.float().clone()
    if cfg.repetition_penalty != 1.0 and generated:
        idx = torch.tensor(sorted(set(generated)), device=scores.device)
        picked = scores[idx]
        scores[idx] = torch.where(picked < 0, picked * cfg.repetition_penalty, picked / cfg.repetition_penalty)
    if cfg.greedy:
        return scores
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if 0 < cfg.top_k < scores.numel():
        kth = torch.topk(scores, cfg.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        remove = cum <= (1 - cfg.top_p)
        remove[-1] = False  # always keep the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return scores


def generate(
    first_logits: torch.Tensor,
    step: Callable[[int], torch.Tensor],
    cfg: GenerationConfig,
    stop_ids: set[int],
    on_token: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Decode from `first_logits` [V]; `step(token)` feeds one token and returns the next logits [V].

    `on_token` sees every token as it is chosen; raising `StopGeneration` from it ends the answer ("stop")."""
    rng = None
    if not cfg.greedy:
        rng = torch.Generator(device="cpu")
        rng.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    out: list[int] = []
    logits = first_logits
    for i in range(cfg.max_new_tokens):
        scores = process_logits(logits, out, cfg)
        if cfg.greedy:
            token = int(scores.argmax())
        else:
            probs = scores.softmax(-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=rng))
        if token in stop_ids:
            return GenerationResult(out, "stop")
        out.append(token)
        if on_token is not None:
            try:
                on_token(token)
            except StopGeneration:
                return GenerationResult(out, "stop")
        if i + 1 < cfg.max_new_tokens:
            logits = step(token)
    return GenerationResult(out, "length")
