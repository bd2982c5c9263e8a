"""The one interface every visual-token compressor implements.

A compressor shrinks what the LLM keeps of a video. Where it acts differs (inside the projector, between
decoder layers, window by window in the KV cache), but callers need the same three facts from each:
its name, whether what it keeps depends on the question (then a chat session cannot reuse the video's
KV prefix across questions), and how many visual tokens each LLM layer ends up caching (for budgets
and `longvid info`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Compressor(ABC):
    name: str = "compressor"

    @property
    def question_dependent(self) -> bool:
        """True if the kept tokens depend on the text after the video (the question)."""
        return False

    @abstractmethod
    def kv_tokens(self, num_visual: int, num_layers: int) -> list[int]:
        """Visual tokens cached by each of `num_layers` layers when `num_visual` tokens enter the LLM."""

    def describe(self) -> str:
        return self.name
