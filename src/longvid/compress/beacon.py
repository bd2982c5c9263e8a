"""Video-XL's visual summarization tokens (VSTs, "beacons"): which rows the LLM reads and keeps, per window.

The LLM reads the visual tokens in windows of `beacon_window` rows, the last one truncated where the
video ends. Inside a window of ratio r, one VST follows every r raw rows:

    r = 4:   x x x x V x x x x V x x x x V ...      (row i is a VST iff i % (r + 1) == r)

VST rows go through the beacon q/k/v projections, attention is plain causal over [cache ; window], and once
the window is done only the VSTs' keys/values stay in the cache. So a video of N visual tokens costs about
N / r cached tokens, and prefill activations are bounded by one window. This file only *plans* that
(window split, interleave pattern, ratio per window); `models/video_xl.py` runs the plan through
`llm.qwen2.Step(beacon_mask, keep)`.

Ratio policy, as the released `Memory` decides it: a single entry in `beacon_ratio` is used for every
window; with several, `beacon_ratio_mix` picks among the ratios that divide the window:
`step-random` draws one per window (the released setting), `instance-random` draws once per video,
`sequence` cycles. The release draws from one `np.random.default_rng(42)` created when the model loads,
so an answer depends on every request made before it; here each plan draws from a fresh
`np.random.default_rng(beacon_seed)` (default 42), which reproduces the release's first request after
loading, every time, with no state shared between requests.

When r does not divide the window (only possible with a single fixed ratio), the rows after the last
VST are dropped with the window and shift the next window's pattern, as in the release: the remainder
`rem` carried in gives `(L + rem) // r` VSTs, the first after `r - rem` raw rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import cycle
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .base import Compressor

RATIO_MIXES = ("step-random", "instance-random", "sequence")


@dataclass
class BeaconConfig:
    """The beacon keys of a released config.json (defaults: the release's config class)."""

    window: int = 1024  # beacon_window (= beacon_stride): raw visual rows per window
    ratios: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])  # beacon_ratio
    ratio_mix: str = "step-random"  # beacon_ratio_mix, used when `ratios` has several entries
    seed: int = 42  # beacon_seed (ours): the ratio draws of every request start from this seed
    enabled: bool = True  # enable_beacon: False reads the video uncompressed in one plain prefill

    @classmethod
    def from_release(cls, d: dict[str, Any]) -> BeaconConfig:
        # settings the release accepts but Video-XL never used: refuse them instead of computing something else
        for key, released in (
            ("beacon_pos", "interleave"),
            ("beacon_attn", "full-coverage"),
            ("beacon_sink_size", 0),
            ("beacon_parallel_window", 1),
            ("beacon_accum", True),
        ):
            if d.get(key, released) != released:
                raise ConfigError(f"{key}={d[key]!r} is not supported (Video-XL was released with {released!r})")
        # beacon_attend_prev only shapes the masks of the other beacon_attn modes: under full-coverage (the only
        # one supported) the release computes the same numbers with True or False, so either is accepted
        attend_prev = d.get("beacon_attend_prev", True)
        if not isinstance(attend_prev, bool):
            raise ConfigError(f"beacon_attend_prev must be true or false, got {attend_prev!r}")
        window = d.get("beacon_window", cls.window)
        if d.get("beacon_stride", window) != window:
            raise ConfigError("beacon_stride must equal beacon_window (interleaved VSTs need whole windows)")
        ratios = d.get("beacon_ratio", [2, 4, 8, 16, 32])
        ratios = [ratios] if isinstance(ratios, int) else ratios
        if not ratios or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ratios):
            raise ConfigError(f"beacon_ratio must be a list of positive integers, got {ratios!r}")
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"beacon_window must be a positive integer, got {window!r}")
        mix = d.get("beacon_ratio_mix", cls.ratio_mix)
        if len(ratios) > 1 and mix not in RATIO_MIXES:
            raise ConfigError(f"beacon_ratio_mix={mix!r} is not supported (use one of {', '.join(RATIO_MIXES)})")
        seed = d.get("beacon_seed", cls.seed)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"beacon_seed must be an integer, got {seed!r}")
        return cls(window, list(ratios), mix, seed, bool(d.get("enable_beacon", True)))


@dataclass(frozen=True)
class Window:
    """One step of the plan: `length` raw visual rows from `start`, with VSTs interleaved at ratio `ratio`."""

    start: int
    length: int
    ratio: int
    remainder: int = 0  # raw rows of an unfinished group carried in from the previous window

    @property
    def num_vst(self) -> int:
        return (self.length + self.remainder) // self.ratio

    @property
    def size(self) -> int:
        """Rows the LLM reads in this step (raw + VST)."""
        return self.length + self.num_vst

    def vst_mask(self, device=None) -> torch.Tensor:
        """[size] bool, True at the VST rows."""
        rows = torch.arange(self.size, device=device)
        return rows % (self.ratio + 1) == self.ratio - self.remainder


@dataclass
class BeaconPlan:
    windows: list[Window]

    @property
    def num_visual(self) -> int:
        return sum(w.length for w in self.windows)

    @property
    def num_vst(self) -> int:
        """Visual rows the cache keeps: every window's VSTs."""
        return sum(w.num_vst for w in self.windows)

    @property
    def ratios(self) -> list[int]:
        return [w.ratio for w in self.windows]

    def peak_rows(self, before: int) -> int:
        """Highest row count [cache ; window] reaches with `before` cached tokens (positions in use)."""
        peak, kept = before, before
        for w in self.windows:
            peak = max(peak, kept + w.size)
            kept += w.num_vst
        return peak


class BeaconCompressor(Compressor):
    name = "beacon"

    def __init__(self, cfg: BeaconConfig):
        self.cfg = cfg

    def plan(self, num_visual: int) -> BeaconPlan:
        """The windows for `num_visual` visual tokens, with ratios drawn from a fresh seeded RNG."""
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        windows: list[Window] = []
        chosen: int | None = None  # instance-random
        order = None  # sequence
        remainder = 0
        for start in range(0, num_visual, cfg.window):
            length = min(cfg.window, num_visual - start)
            if len(cfg.ratios) == 1:
                ratio = cfg.ratios[0]
            else:
                valid = [r for r in cfg.ratios if r <= length and length % r == 0]
                if not valid:
                    raise ConfigError(
                        f"no ratio in beacon_ratio={cfg.ratios} divides a window of {length} visual "
                        f"tokens; use a single ratio (--set beacon_ratio=[r])"
                    )
                if cfg.ratio_mix == "step-random":
                    ratio = int(rng.choice(valid))
                elif cfg.ratio_mix == "instance-random":
                    chosen = chosen if chosen is not None else int(rng.choice(valid))
                    ratio = chosen
                else:
                    order = order if order is not None else cycle(valid)
                    ratio = next(order)
            windows.append(Window(start, length, ratio, remainder))
            remainder = (length + remainder) % ratio
        return BeaconPlan(windows)

    def kv_tokens(self, num_visual: int, num_layers: int) -> list[int]:
        kept = self.plan(num_visual).num_vst if self.cfg.enabled else num_visual
        return [kept] * num_layers

    def describe(self) -> str:
        cfg = self.cfg
        if not cfg.enabled:
            return "beacon: off (enable_beacon=false)"
        policy = (
            f"ratio {cfg.ratios[0]}"
            if len(cfg.ratios) == 1
            else f"ratio {cfg.ratio_mix} from {cfg.ratios} (seed {cfg.seed})"
        )
        return f"beacon: windows of {cfg.window} visual tokens, {policy}"
