"""One model thread, a bounded queue in front of it, and a way to stop a job early.

A model here is not re-entrant (one KV cache per request, torch modules shared), so every model call
runs on a single thread, one job at a time, in arrival order. In front of it, `Admission` bounds what
the server takes on: at most `max_concurrency` requests in progress (fetching their media, queued on
or running on the model thread) plus `max_queue` waiting for a slot; the next one is refused at once
(HTTP 429) rather than piling up until every client times out. A request keeps its slot until its
job has really left the model thread, so a client that disconnects cannot make room for more work
than the thread can do.

A job checks its `JobControl` between generated tokens, and -- through forward pre-hooks the worker
puts on every layer of the model's blocks (vision encoder and LLM) -- between layers while it
decodes, encodes and prefills: a client that went away or a deadline that passed ends the job within
one layer's work (and a job cancelled while still queued never starts), so the model thread moves on
to the next request. Text is admitted in bounded amounts: each slot carries the request's text
tokens, and the tokens of all requests in progress or waiting are capped together.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import torch

from ..errors import LongvidError

log = logging.getLogger("longvid.serve")
T = TypeVar("T")


class QueueFull(Exception):
    """Every slot is taken and the queue is full."""


class Cancelled(Exception):
    """The client went away; nobody is waiting for this answer."""


class DeadlineExceeded(Exception):
    """The request ran out of time."""


class JobControl:
    """Shared by a request's handler (which cancels) and its job on the model thread (which checks)."""

    def __init__(self, timeout: float, started: float | None = None):
        self.timeout = timeout
        self.deadline = (time.monotonic() if started is None else started) + timeout
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def check(self) -> None:
        """Raise if the job should stop now (called between tokens and between stages)."""
        if time.monotonic() > self.deadline:
            raise DeadlineExceeded(f"the request did not finish within {self.timeout:g} s")
        if self._cancelled.is_set():
            raise Cancelled()


class Slot:
    """A place among the requests in progress; release it once (more calls do nothing).

    `claimed` is set by the handler that hands the slot on to a job (which releases it when it ends);
    whoever took the slot releases it if nobody claimed it."""

    def __init__(self, admission: Admission):
        self._admission: Admission | None = admission
        self.text_tokens = 0
        self.claimed = False

    def reserve_text(self, tokens: int) -> None:
        """Count this request's text against the server-wide cap (QueueFull if it does not fit now)."""
        assert self._admission is not None
        self._admission._reserve_text(tokens)
        self.text_tokens += tokens

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self.text_tokens)
            self._admission = None


class Admission:
    """At most `max_concurrency` requests in progress and `max_queue` waiting, and at most
    `max_text_tokens` text tokens over all of them; event-loop side only."""

    def __init__(self, max_concurrency: int, max_queue: int, max_text_tokens: int | None = None):
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.max_text_tokens = max_text_tokens
        self.active = self.waiting = self.rejected = self.text_tokens = 0
        self._free = asyncio.Semaphore(max_concurrency)

    async def acquire(self) -> Slot:
        if self.active + self.waiting >= self.max_concurrency + self.max_queue:
            self.rejected += 1
            raise QueueFull(
                f"the server is busy ({self.active} requests in progress, {self.waiting} waiting); retry later"
            )
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        return Slot(self)

    def _reserve_text(self, tokens: int) -> None:
        if self.max_text_tokens is not None and self.text_tokens + tokens > self.max_text_tokens:
            self.rejected += 1
            raise QueueFull(
                f"the server is busy ({self.text_tokens} text tokens in progress, at most "
                f"{self.max_text_tokens} in all); retry later"
            )
        self.text_tokens += tokens

    def _release(self, text_tokens: int = 0) -> None:
        self.active -= 1
        self.text_tokens -= text_tokens
        self._free.release()


class ModelWorker:
    """The thread every model call runs on. `submit` returns a `concurrent.futures.Future`."""

    def __init__(self, model: torch.nn.Module | None = None):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="longvid-model", daemon=True)
        self._current: JobControl | None = None
        self._model, self._hooks = model, []
        self.stats: Counter[str] = Counter()  # completed, cancelled, timed_out, invalid, failed

    @property
    def busy(self) -> bool:
        return self._current is not None

    def start(self) -> None:
        if self._model is not None:
            self._hooks = [m.register_forward_pre_hook(self._check) for m in _layers(self._model)]
        self._thread.start()

    def _check(self, *_) -> None:
        """Runs before every layer: the running job stops here once cancelled or out of time."""
        current = self._current
        if current is not None and threading.current_thread() is self._thread:
            current.check()

    def submit(self, fn: Callable[[], T], control: JobControl) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, control))
        return future

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the running job and everything queued, then end the thread."""
        current = self._current
        if current is not None:
            current.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)
        for hook in self._hooks:
            hook.remove()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, fn, control = item
            if not future.set_running_or_notify_cancel():
                self.stats["cancelled"] += 1
                continue
            self._current = control
            try:
                control.check()
                result = fn()
            except Cancelled as e:
                self.stats["cancelled"] += 1
                future.set_exception(e)
            except DeadlineExceeded as e:
                self.stats["timed_out"] += 1
                future.set_exception(e)
            except LongvidError as e:
                self.stats["invalid"] += 1
                future.set_exception(e)
            except BaseException as e:  # a bug: keep serving, log it, let the handler answer 500
                self.stats["failed"] += 1
                log.exception("model job failed")
                future.set_exception(e)
            else:
                self.stats["completed"] += 1
                future.set_result(result)
            finally:
                self._current = None
        while not self._jobs.empty():  # stopping: whatever is still queued will not run
            item = self._jobs.get_nowait()
            if item is not None:
                item[0].cancel()


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a model (the entries of its ModuleLists): where a long forward can stop."""
    return [layer for m in model.modules() if isinstance(m, torch.nn.ModuleList) for layer in m]
