"""What the pipeline hands between its steps and back to users: plain records, no behaviour."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .budget import TokenBudget
from .prompt import IMAGE_TOKEN_INDEX
from .video.sampling import SamplingPlan


@dataclass
class VisualTokens:
    """A video after the vision encoder and projector: the LLM-space tokens plus where they came from."""

    tokens: torch.Tensor  # [num_visual, hidden]
    plan: SamplingPlan
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.plan)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class Prompt:
    """Token ids of the whole conversation, one IMAGE_TOKEN_INDEX where the video goes, and its budget."""

    ids: list[int]
    budget: TokenBudget

    @property
    def video_end(self) -> int:
        """Index just past the video placeholder: `ids[:video_end]` is what a chat session prefills once."""
        return self.ids.index(IMAGE_TOKEN_INDEX) + 1

    @property
    def prompt_tokens(self) -> int:
        """Text + visual tokens, as the model's context counts them (the placeholder itself is not one)."""
        return self.budget.text_tokens + self.budget.visual_tokens


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
