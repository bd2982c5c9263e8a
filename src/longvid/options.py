"""What a user may ask for, checked once where it enters (CLI, Python API, server) with one set of limits.

A value is either accepted with a defined meaning or refused with one line (`ConfigError`: CLI exit
code 2, HTTP 400). The server's pydantic schemas use the same limits (serve/schemas.py imports them).

* `SamplingOptions`: which frames to look at (`--max-frames`, `--fps`, `--num-frames`, `--start`,
  `--end`, `--input-fps`, timestamps). Counts are whole numbers up to `MAX_FRAMES`, so a request for
  a billion frames is refused before any list is built; times are finite seconds up to `MAX_SECONDS`.
* `GenerationOptions`: the user's overrides of the checkpoint's generation config. Unknown keys are
  refused (a typo is not silently ignored). Temperatures below `MIN_TEMPERATURE` decode greedily: it is
  the limit of sampling as the temperature goes to 0, and dividing logits by 1e-300 would give inf/nan.
* `check_overrides`: `--set` keys must be settings (in config.json or read by longvid) and keep their type.
* `check_device`: a device torch knows and this machine has.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ConfigError

MAX_FRAMES = 100_000  # frames one request may sample (an hour at ~28 fps)
MAX_SECONDS = 10_000_000.0  # start / end / timestamps (about four months)
MIN_TEMPERATURE = 1e-5  # below it sampling is greedy decoding
MAX_TEMPERATURE = 2.0  # OpenAI's upper bound


def _count(name: str, value: Any, low: int = 1, high: int = MAX_FRAMES) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x) or x > high or x < low or (low_open and x == low):
        if math.isfinite(high):
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        else:
            where = f"{'>' if low_open else '>='} {low:g}"
        raise ConfigError(f"{name} must be a finite number {where}, got {value!r}")
    return x


@dataclass(frozen=True)
class SamplingOptions:
    """Which frames to look at; None keeps the model family's default plan."""

    max_frames: int | None = None  # cap on sampled frames
    fps: float | None = None  # frames per second to sample
    num_frames: int | None = None  # exactly N frames
    start: float | None = None  # seconds: only look from here on
    end: float | None = None  # seconds: only look up to here
    timestamps: tuple[float, ...] | None = None  # the frames nearest to these seconds
    input_fps: float | None = None  # frame rate of inputs without one (arrays, frame folders)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "max_frames", _count("max_frames", self.max_frames))
        set_(self, "num_frames", _count("num_frames", self.num_frames))
        # a sampling rate above the video's means every frame (plans never sample faster than the source)
        set_(self, "fps", _number("fps", self.fps, 0.0, math.inf, low_open=True))
        set_(self, "input_fps", _number("input_fps", self.input_fps, 0.0, math.inf, low_open=True))
        set_(self, "start", _number("start", self.start, 0.0, MAX_SECONDS))
        set_(self, "end", _number("end", self.end, 0.0, MAX_SECONDS, low_open=True))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ConfigError(f"end ({self.end:g} s) must be after start ({self.start:g} s)")
        if self.timestamps is not None:
            if isinstance(self.timestamps, (str, bytes)) or not hasattr(self.timestamps, "__len__"):
                raise ConfigError("timestamps must be a list of seconds")
            if len(self.timestamps) > MAX_FRAMES:
                raise ConfigError(f"at most {MAX_FRAMES} timestamps")
            set_(self, "timestamps", tuple(_number("timestamps", t, 0.0, MAX_SECONDS) for t in self.timestamps) or None)

    @classmethod
    def of(cls, value: SamplingOptions | dict[str, Any] | None = None, **given: Any) -> SamplingOptions:
        """Options from an instance, a dict of the field names, and/or keywords; unknown names are refused."""
        if isinstance(value, SamplingOptions):
            return value.replace(**given) if given else value
        merged = {**(value or {}), **given}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"unknown sampling option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**merged)

    def replace(self, **changes: Any) -> SamplingOptions:
        return SamplingOptions(**{**asdict(self), **changes})

    def plan_args(self) -> dict[str, Any]:
        """What decides the sampling plan (the input's frame rate is the video's, not the plan's)."""
        d = asdict(self)
        d.pop("input_fps")
        d["timestamps"] = list(self.timestamps) if self.timestamps else None
        return d


GENERATION_KEYS = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
    "eos_token_id",
)


@dataclass(frozen=True)
class GenerationOptions:
    """Overrides of the checkpoint's generation config; None keeps the checkpoint's value."""

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None  # 0 (or below MIN_TEMPERATURE): greedy
    top_k: int | None = None  # <= 0: off
    top_p: float | None = None  # (0, 1]
    repetition_penalty: float | None = None
    seed: int | None = None
    eos_token_id: tuple[int, ...] | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "max_new_tokens", _count("max_new_tokens", self.max_new_tokens, 1, 10**9))
        if self.do_sample is not None and not isinstance(self.do_sample, bool):
            raise ConfigError(f"do_sample must be true or false, got {self.do_sample!r}")
        set_(self, "temperature", _number("temperature", self.temperature, 0.0, MAX_TEMPERATURE))
        set_(self, "top_k", _count("top_k", self.top_k, -1, 10**9))
        set_(self, "top_p", _number("top_p", self.top_p, 0.0, 1.0, low_open=True))
        set_(self, "repetition_penalty", _number("repetition_penalty", self.repetition_penalty, 0.0, 1e6, True))
        set_(self, "seed", _count("seed", self.seed, -(2**63), 2**64 - 1))
        if self.eos_token_id is not None:
            ids = [self.eos_token_id] if isinstance(self.eos_token_id, int) else self.eos_token_id
            if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
                raise ConfigError("eos_token_id must be a token id or a list of them")
            set_(self, "eos_token_id", tuple(_count("eos_token_id", i, 0, 2**31) for i in ids))

    @classmethod
    def of(cls, value: GenerationOptions | dict[str, Any] | None = None, **given: Any) -> GenerationOptions:
        """Options from an instance or a dict, plus keywords (None values are left out); unknown keys are refused."""
        base = asdict(value) if isinstance(value, GenerationOptions) else dict(value or {})
        merged = {**base, **{k: v for k, v in given.items() if v is not None}}
        unknown = sorted(set(merged) - set(GENERATION_KEYS))
        if unknown:
            raise ConfigError(f"unknown generation setting {unknown[0]!r} (known: {', '.join(GENERATION_KEYS)})")
        return cls(**merged)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# ------------------------------------------------------------------------------------------ model settings


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "null"


def check_overrides(config: dict[str, Any], overrides: dict[str, Any], known: set[str] | None = None) -> None:
    """Refuse `--set` keys that neither config.json holds nor the config readers read (`known`; not checked when
    None), values of another type than config.json's, and non-positive values for positive settings."""
    for key, value in overrides.items():
        if key not in config:
            if known is not None and key not in known:
                raise ConfigError(f"--set {key}: no such setting (not in config.json, not read by longvid)")
            continue
        old = config[key]
        if old is None or value is None:
            continue
        if _kind(old) != _kind(value):
            raise ConfigError(f"--set {key}={value!r}: expected a {_kind(old)} like {old!r} (a JSON value)")
        if _kind(old) == "number" and not math.isfinite(float(value)):
            raise ConfigError(f"--set {key}: must be a finite number")
        if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"--set {key}={value!r}: expected a whole number like {old!r}")
        if _kind(old) == "number" and old > 0 and value <= 0:
            raise ConfigError(f"--set {key}={value!r}: must be positive (config.json has {old!r})")


def check_device(device: str) -> str:
    """A device torch can use here: 'cpu', 'cuda', 'cuda:1', 'mps'."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r}: not a device (use cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {device}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device}: only cpu, cuda and mps are supported")
    return device
