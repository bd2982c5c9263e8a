"""`longvid serve --engine vllm`: the same OpenAI API (serve/app.py), answered by vLLM's async engine.

Everything in front of the model is longvid's server as it is: API key, body and text caps, admission
(429), media URL rules, the frame limit, deadlines, disconnects, OpenAI-shaped errors. What changes is
where a request runs. Instead of the one model thread, each request is an asyncio task that

1. plans the frames and checks the prompt's budget with longvid's sampler and prompt code, then
   decodes the frames (`PromptBuilder.request`, on a thread: decoding is blocking work);
2. hands the prompt to vLLM's `AsyncLLM`, whose scheduler batches it with every other request in
   flight (continuous batching; the vision tower runs inside vLLM, `--tensor-parallel-size` GPUs);
3. turns the token ids vLLM streams back into text with longvid's `TextStream` (stop strings, leading
   whitespace and UTF-8 handled as with the other engine, so both engines give the same text).

A cancelled or timed-out request is aborted inside vLLM at once. `--cache-dir` / `--cache-items` do not
apply: vLLM keeps its own cache of processed media.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from ..errors import BudgetError, InputError
from ..generation import StopGeneration
from ..models.base import VideoLLM
from ..options import GenerationOptions
from ..serve.engine import ChatOutcome, ChatTask
from ..serve.worker import JobControl
from ..streaming import TextStream
from .inputs import PromptBuilder, VLLMRequest
from .logits import KEY


class VLLMChatEngine:
    """What the server's routes call for each request when the engine is vLLM."""

    model = None  # no torch module on this side: the server's model thread has nothing to run

    def __init__(self, builder: VideoLLM, tensor_parallel_size: int = 1, **engine_args: Any):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.builder = PromptBuilder(builder)
        m = self.builder.model
        self.name, self.tokenizer, self.generation = m.name, m.tokenizer, m.generation
        overrides = {k: v for k, v in m.config.raw.items() if k not in _released(m)}  # --set
        if overrides:
            engine_args = {"hf_overrides": overrides, **engine_args}
        args = AsyncEngineArgs(
            model=str(m.folder), dtype=_vllm_dtype(m), tensor_parallel_size=tensor_parallel_size, **engine_args
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.max_model_len = int(self.engine.model_config.max_model_len)

    def context_limit(self) -> int:
        return min(self.builder.model.context_limit(), self.max_model_len)

    def shutdown(self) -> None:
        self.engine.shutdown()

    def sampling_params(self, task: ChatTask, req: VLLMRequest):
        """longvid's generation settings (checkpoint, family defaults, request) as vLLM SamplingParams."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        cfg = self.generation.updated(GenerationOptions.of(task.gen, max_new_tokens=task.max_new_tokens).overrides())
        room = self.context_limit() - req.budget.context_tokens
        return SamplingParams(
            max_tokens=max(min(cfg.max_new_tokens, room), 1),
            temperature=0.0 if cfg.greedy else cfg.temperature,
            top_p=1.0 if cfg.greedy else cfg.top_p,
            top_k=0 if cfg.greedy else max(cfg.top_k, 0),
            repetition_penalty=1.0,  # the official penalty counts generated tokens only: logits.py applies it
            extra_args={KEY: cfg.repetition_penalty} if cfg.repetition_penalty != 1.0 else None,
            seed=cfg.seed,
            stop_token_ids=sorted(self.builder.model.stop_ids),
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    async def run_chat_async(
        self, task: ChatTask, control: JobControl, frame_limit: int, emit: Callable[[str], None] | None = None
    ) -> ChatOutcome:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        build = partial(
            self.builder.request,
            task.media.source,
            task.question,
            task.sampling,
            task.history,
            task.system,
            frame_limit,
            control.check,
        )
        try:
            req = await loop.run_in_executor(None, build)
        except InputError as e:
            if task.media.temp is None:
                raise
            # a data: or downloaded video lives in a temp file of ours: do not show clients its path
            raise type(e)(str(e).replace(str(task.media.temp), task.media.label)) from None
        if req.budget.context_tokens >= self.max_model_len:
            raise BudgetError(
                f"the prompt needs {req.budget.context_tokens} tokens ({req.visual_tokens} visual); the vLLM "
                f"engine was started with max_model_len={self.max_model_len} (lower nframes / fps)"
            )
        decoded = time.perf_counter()
        control.check()
        text = TextStream(self.tokenizer, task.stop)
        stop_ids = self.builder.model.stop_ids
        finish, prompt_tokens, rid = "length", 0, f"longvid-{uuid.uuid4().hex}"
        outputs = self.engine.generate(req.prompt, self.sampling_params(task, req), rid)
        try:
            async for out in outputs:
                control.check()
                prompt_tokens = len(out.prompt_token_ids or ()) or prompt_tokens
                piece = out.outputs[0]
                for token in piece.token_ids:
                    if token in stop_ids:
                        break
                    delta = text.push(token)
                    if delta and emit is not None:
                        emit(delta)
                    if text.stopped:
                        raise StopGeneration()
                if piece.finish_reason is not None:
                    finish = "length" if piece.finish_reason == "length" else "stop"
        except StopGeneration:
            finish = "stop"
            await self.engine.abort(rid)
        except BaseException:  # cancelled, deadline, client gone: free vLLM's slot now
            await self.engine.abort(rid)
            raise
        finally:
            await outputs.aclose()
        tail = text.flush()
        if tail and emit is not None:
            emit(tail)
        done = time.perf_counter()
        return ChatOutcome(
            text=text.text,
            finish_reason=finish,
            completion_tokens=len(text.ids),
            prompt_tokens=prompt_tokens or req.budget.context_tokens,
            visual_tokens=req.visual_tokens,
            plan=req.plan,
            cache_hit=False,
            timings={"decode": round(decoded - started, 6), "generate": round(done - decoded, 6)},
        )


def _released(m: VideoLLM) -> set[str]:
    """config.json's keys as released (the rest of `config.raw` came from --set and goes to vLLM too)."""
    from ..checkpoint import read_config

    released = read_config(m.folder)
    return {k for k, v in m.config.raw.items() if k in released and released[k] == v}


def _vllm_dtype(m: VideoLLM) -> str:
    import torch

    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[m.dtype]
