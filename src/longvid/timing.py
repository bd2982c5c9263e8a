"""Small helpers for the encode loop: named timers, batches from an iterator, a progress bar."""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager


class Timer:
    """Seconds spent per named step, summed over repeats: `with timer("decode"): ...`."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


def batched(items, size: int, timer: Timer | None = None):
    """Lists of up to `size` items from an iterator (time spent pulling them counts as "decode")."""
    items = iter(items)
    timer = timer or Timer()
    while True:
        with timer("decode"):
            batch = list(itertools.islice(items, size))
        if not batch:
            return
        yield batch


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, leave=False, dynamic_ncols=True)
