"""What a request costs before any heavy work: tokens, context, KV-cache bytes (a leaf module)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import BudgetError


@dataclass
class TokenBudget:
    """Text and visual tokens of one prompt against the model's context, and what the KV cache will hold."""

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
        """Refuse (BudgetError, with what to change) instead of silently truncating the prompt."""
        if self.fits:
            return
        if self.max_frames() > 0:
            hint = f"sample at most {self.max_frames()} frames (--max-frames / --fps)"
        else:
            hint = "shorten the text"
        raise BudgetError(
            f"{self.visual_tokens} visual + {self.text_tokens} text tokens = {self.context_tokens} exceed the model's "
            f"context of {self.context_limit}; {hint}, enable compression (--set ...), or raise the limit "
            f"with --set (e.g. tokenizer_model_max_length)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(context_tokens=self.context_tokens, fits=self.fits)
        return d
