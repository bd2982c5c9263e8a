"""longvid as an lmms-eval "simple" model: `generate_until` and `loglikelihood` over the longvid pipeline.

Requests carry (context, generation kwargs or target, doc_to_visual, doc_id, task, split) as in lmms-eval's
own simple models; video tasks' `doc_to_visual` gives `[path]` or, in VideoChat-Flash's fork,
`[path, {"start", "end", ...}]`. The context is the user text (the family's chat template, time message
and system prompt are added by the pipeline, as VideoChat-Flash's wrapper leaves them to `model.chat`).
`max_frames` defaults to the family's paper setting (runner.FAMILY_FRAMES). Import only under lmms-eval.

loglikelihood follows what lmms-eval does, not what its model guide says ("log-probability"): every built-in
model (models/simple/llava.py, llava_onevision.py, ...; Video-XL's eval/videoxl.py too) returns
`(loss, is_greedy)` with loss = the mean negative log-likelihood per continuation token, and the
multiple_choice scorer picks the *smallest* value (api/task.py `ConfigurableTask.process_results`, `np.argmin`;
lmms-eval issue #370). Returning log-probabilities there would pick the least likely choice.

lmms-eval 0.7.x passes every model output through `unwrap_generation_output` (api/instance.py), which turns
anything that is not text into `str(output)`, so a `(loss, is_greedy)` tuple reaches the scorer as the string
"(1.23, False)" and every loglikelihood / multiple_choice task fails, for every model. The one output it hands
through untouched is a `GenerationResult`'s `text`, so where lmms-eval stringifies (checked by behaviour, not by
version) the tuple travels in one. Without that bug (0.6.x, or a fixed release) plain tuples are returned.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from lmms_eval.api import instance as lmms_instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..features import FeatureCache
from ..flags import load_model
from ..options import GenerationOptions, SamplingOptions
from ..pipeline import Pipeline
from .runner import default_frames


def _stringifies_scores() -> bool:
    """Does this lmms-eval turn a loglikelihood tuple into text on its way to the scorer? (0.7.x does.)"""
    unwrap = getattr(lmms_instance, "unwrap_generation_output", None)
    return unwrap is not None and unwrap((0.0, True))[0] != (0.0, True)


def loglikelihood_result(loss: float, greedy: bool) -> Any:
    """`(loss, is_greedy)` in the form that reaches this lmms-eval's scorer as a tuple."""
    if _stringifies_scores():
        return lmms_instance.GenerationResult(text=(loss, greedy))  # text: the one field passed through as is
    return (loss, greedy)


class LongvidLMM(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        max_frames: int | str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        cache_dir: str | None = None,
        batch_size: int | str = 1,
        **kwargs: Any,
    ):
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError("longvid answers one request at a time (batch_size=1)")
        self._rank = int(os.environ.get("RANK", "0"))
        self._world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if device.startswith("cuda") and self._world_size > 1:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        self.model = load_model(pretrained, None, dtype, device)
        self.pipeline = Pipeline(self.model, FeatureCache(cache_dir))
        self.max_frames = int(max_frames) if max_frames else default_frames(self.model.family, "default")

    def _video(self, doc_to_visual, doc_id, task, split) -> tuple[Any, SamplingOptions]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else None
        if not visuals:
            raise ValueError(f"{task} doc {doc_id}: longvid needs a video (doc_to_visual gave none)")
        video, media = visuals[0], (visuals[1] if len(visuals) > 1 and isinstance(visuals[1], dict) else {})
        if not isinstance(video, (str, os.PathLike)):  # images / frames: one array [T, H, W, 3]
            video = np.stack([np.asarray(v.convert("RGB") if hasattr(v, "convert") else v) for v in visuals])
        return video, SamplingOptions(max_frames=self.max_frames, start=media.get("start"), end=media.get("end"))

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in tqdm(requests, disable=self.rank != 0, desc="longvid"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            video, sampling = self._video(doc_to_visual, doc_id, task, split)
            gen = GenerationOptions(
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", 1024)), do_sample=False, temperature=0.0
            )
            answer, _ = self.pipeline.ask(video, context, sampling, gen=gen)
            text = answer.text
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    text = text.split(stop)[0]
            out.append(text.strip())
        return out

    def loglikelihood(self, requests) -> list[Any]:
        """(mean negative log-likelihood per target token, greedy?) per request: lmms-eval's loss convention."""
        out = []
        for req in tqdm(requests, disable=self.rank != 0, desc="longvid"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            target = (
                doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self.task_dict[task][split][doc_id])
            )
            video, sampling = self._video(doc_to_visual, doc_id, task, split)
            prompt, visual, _ = self.pipeline.visual(video, sampling, question=context)
            ids = self.model.tokenizer.encode(target, add_special_tokens=False)
            logprob, greedy = self.pipeline.continuation_logprob(prompt, visual, ids)
            out.append(loglikelihood_result(-logprob / max(len(ids), 1), greedy))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("longvid does not implement multi-round generation for lmms-eval")
