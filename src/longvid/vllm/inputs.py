"""vLLM prompts made by longvid's own sampler and prompt code, so vLLM sees what `longvid ask` sees.

    from vllm import LLM, SamplingParams
    from longvid.vllm.inputs import PromptBuilder

    builder = PromptBuilder(path)                       # tokenizer + config only, no weights
    req = builder.request("clip.mp4", "What happens?")  # the official ~1 fps sampler, time message
    LLM(model=path).generate(req.prompt, SamplingParams(temperature=0))

`request` takes what `model.ask` takes: a path, an array [T, H, W, 3], a `Video`, or `VisualTokens`
(precomputed rows, e.g. `longvid encode` output, so the encode can happen on another machine; the
engine then needs `enable_mm_embeds=True`). The prompt is token ids with one placeholder token where
the official prompt has `<image>`; the model's processor widens it to one row per visual token.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..budget import TokenBudget
from ..models.base import VideoLLM
from ..options import SamplingOptions
from ..outputs import VisualTokens
from ..pipeline import Pipeline
from ..prompt import IMAGE_TOKEN_INDEX
from ..video import SamplingPlan
from .model import PLACEHOLDER


@dataclass
class VLLMRequest:
    prompt: dict[str, Any]  # a vLLM TokensPrompt: prompt_token_ids + multi_modal_data
    plan: SamplingPlan
    budget: TokenBudget
    modality: str  # "video" or "image"

    @property
    def visual_tokens(self) -> int:
        return self.budget.visual_tokens


class PromptBuilder:
    """Plans, prompts and budgets like longvid's pipeline, for a checkpoint served by vLLM."""

    def __init__(self, model: VideoLLM | str | os.PathLike, **load_kwargs: Any):
        if not isinstance(model, VideoLLM):
            from ..models import load

            model = load(model, weights=False, **load_kwargs)  # built on the meta device: nothing to run
        self.model = model
        self.pipeline = Pipeline(model)
        self.placeholder = model.tokenizer.convert_tokens_to_ids(PLACEHOLDER)

    def token_ids(self, ids: list[int]) -> list[int]:
        """longvid's prompt ids with the one placeholder token where IMAGE_TOKEN_INDEX is."""
        return [self.placeholder if t == IMAGE_TOKEN_INDEX else t for t in ids]

    def request(
        self,
        video,
        question: str,
        sampling: SamplingOptions | dict[str, Any] | None = None,
        history=(),
        system: str | None = None,
        frame_limit: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> VLLMRequest:
        """The vLLM prompt for `question` about `video`; refused (InputError / BudgetError) before any frame
        is decoded when the plan or the prompt is too long. `check` runs before decoding (cancellation)."""
        pipe = self.pipeline
        if isinstance(video, VisualTokens):
            prompt = pipe.prompt(video.plan, question, history, system)
            modality = "image" if video.plan.is_image else "video"
            data = {modality: [video.tokens.detach().cpu()]}
            return VLLMRequest(self._tokens_prompt(prompt.ids, data), video.plan, prompt.budget, modality)
        sampling = SamplingOptions.of(sampling)
        source = pipe.open(video, sampling)
        try:
            plan = pipe.plan(source, sampling, frame_limit)
            prompt = pipe.prompt(plan, question, history, system)
            if check is not None:
                check()
            frames = np.stack(list(source.frames(plan.indices)))
        finally:
            if source is not video:
                source.close()
        modality = "image" if plan.is_image else "video"
        data = {"image": frames[0]} if plan.is_image else {"video": frames}
        return VLLMRequest(self._tokens_prompt(prompt.ids, data), plan, prompt.budget, modality)

    def _tokens_prompt(self, ids: list[int], data: dict[str, Any]) -> dict[str, Any]:
        return {"prompt_token_ids": self.token_ids(ids), "multi_modal_data": data}
