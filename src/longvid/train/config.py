"""A training stage as data, read from YAML.

One file describes one stage, or several stages that run in order (a short-to-long curriculum):
top-level keys are shared defaults and each entry of `stages:` overrides some of them. Each later
stage starts from the previous stage's final weights unless it names its own `model.path` / `model.init`.

    name: stage2                     # stage name (default: the file name)
    seed: 0
    threads: 1                       # torch threads per process (tiny models run best on 1)
    model:
      path: runs/stage1/final        # a checkpoint in the released format (or a LoRA adapter folder)
      init: {hidden: 64, ...}        # ... or a random tiny one made with longvid.tiny (no files needed)
      set: {mm_local_num_frames: 4}  # config.json overrides, saved with the weights
      resolution: 448                # frame size S (UMT: picks umt-hd-large / umt-large)
      layers: 6                      # deepen the LLM: new layers start as no-ops (longvid.train.module.deepen)
      precision: bf16                # fp32, or bf16 autocast over fp32 master weights
      gradient_checkpointing: true
    trainable:                       # learning rate per module; absent or null = frozen
      vision_tower: 2.0e-6
      projector: 1.0e-5
      llm: 1.0e-5
    lora: {r: 16, alpha: 32, dropout: 0.05, targets: [q_proj, v_proj]}   # LLM through LoRA (peft)
    data: {files: [...], root: ..., sample: dynamic_fps1, frames_lowbound: 64, frames_upbound: 512, ...}
    optim: {global_batch_size: 256, micro_batch_size: 1, epochs: 1, warmup_ratio: 0.03, ...}
    distributed: {strategy: ddp}     # ddp | fsdp2 | deepspeed (same file for 1 process and N)
    output: {dir: runs/stage2, save_every: 500, keep_last: 2}

Relative paths in the file are relative to the working directory; media paths inside records are
relative to their data root. `--set key.sub=value`, `--max-steps` and `--output` apply to every stage.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..prompt import DEFAULT_SYSTEM

MODULES = ("vision_tower", "projector", "llm")
LLM_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelSpec:
    path: str | None = None
    init: dict[str, Any] | None = None  # kwargs of longvid.tiny.tiny_videochat_flash_config, plus seed
    set: dict[str, Any] = field(default_factory=dict)
    resolution: int | None = None
    layers: int | None = None  # grow the LLM to this many decoder layers, computing what it did before
    precision: str = "fp32"
    gradient_checkpointing: bool = False


@dataclass
class LoraSpec:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LLM_LINEARS))  # LLM linear layers by name


@dataclass
class DataFile:
    path: str
    root: str | None = None  # media root of this file (default: data.root)


@dataclass
class DataSpec:
    files: list[DataFile] = field(default_factory=list)
    root: str = "."
    # generated toy data (see longvid.train.toy); a list mixes several generated sets in one stage
    synthetic: dict[str, Any] | list[dict[str, Any]] | None = None
    frames_lowbound: int = 0
    frames_upbound: int = 512
    sample: str = (
        "dynamic_fps1"  # the official samplers: dynamic_fps1 (~1 fps) or middle (frames_upbound segments); all
    )
    template: str = "qwen"  # qwen (ChatML, stages 2-4) or plain ("<image>" + answer, the stage-1 connector init)
    labels: str = "official"  # official (preprocess_qwen: role tokens and newlines too) or answers (replies only)
    time_message: bool | str = True  # true: the official training string; "chat": as `longvid ask` builds it; false
    system: str = DEFAULT_SYSTEM
    max_length: int | None = None  # default: the model's tokenizer_model_max_length
    group_by_length: bool = True
    num_workers: int = 0


@dataclass
class OptimSpec:
    global_batch_size: int = 8  # samples per optimizer step over all processes
    micro_batch_size: int = 1  # samples per forward on one process
    epochs: float = 1
    max_steps: int | None = None
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0


@dataclass
class DistributedSpec:
    strategy: str = "ddp"  # ddp | fsdp2 | deepspeed
    zero_stage: int = 1  # deepspeed only: 1 or 2 (the official recipe: ZeRO-1); fsdp2 shards parameters


@dataclass
class OutputSpec:
    dir: str = "runs/train"
    save_every: int = 0  # optimizer steps between resumable checkpoints (0: only the final one)
    keep_last: int = 2
    log_every: int = 1
    save_dtype: str | None = None  # final weights (default: the model's torch_dtype)
    plot: bool = True


@dataclass
class StageConfig:
    name: str = "train"
    seed: int = 0
    threads: int | None = None  # torch threads per process (default: torch's choice); 1 suits tiny models
    model: ModelSpec = field(default_factory=ModelSpec)
    trainable: dict[str, float | None] = field(default_factory=dict)
    lora: LoraSpec | None = None
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    output: OutputSpec = field(default_factory=OutputSpec)

    def lr(self, module: str) -> float | None:
        return self.trainable.get(module)

    def accumulation(self, processes: int) -> int:
        """Micro-batches per process and optimizer step, for `processes` processes."""
        per_step = self.optim.micro_batch_size * processes
        if self.optim.global_batch_size % per_step:
            raise ConfigError(
                f"stage {self.name}: optim.global_batch_size {self.optim.global_batch_size} is not a "
                f"multiple of micro_batch_size x processes = {per_step}"
            )
        return self.optim.global_batch_size // per_step

    @property
    def continues(self) -> bool:
        """True for a later stage that starts from the previous stage's final weights."""
        return self.model.path is None and self.model.init is None

    def validate(self, first: bool = True) -> None:
        bad = sorted(set(self.trainable) - set(MODULES))
        if bad:
            raise ConfigError(f"stage {self.name}: unknown trainable module {bad[0]!r} (use {', '.join(MODULES)})")
        for module, lr in self.trainable.items():
            if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < 1e3):
                raise ConfigError(
                    f"stage {self.name}: trainable.{module} must be a learning rate >= 0 "
                    f"(or null to freeze it), got {lr!r}"
                )
        if not any(v for v in self.trainable.values()):
            raise ConfigError(f"stage {self.name}: nothing to train (give a learning rate under trainable:)")
        if self.lora is not None and not self.lr("llm"):
            raise ConfigError(f"stage {self.name}: lora needs a learning rate for trainable.llm")
        if self.model.path is not None and self.model.init is not None:
            raise ConfigError(f"stage {self.name}: give model.path or model.init, not both")
        if first and self.continues:
            raise ConfigError(f"stage {self.name}: give model.path (a checkpoint folder) or model.init")
        checks = [
            (self.model.precision in ("fp32", "bf16"), "model.precision must be fp32 or bf16"),
            (self.model.layers is None or self.model.layers >= 1, "model.layers must be at least 1"),
            (self.data.sample in ("dynamic_fps1", "middle", "all"), "data.sample must be dynamic_fps1, middle or all"),
            (self.data.template in ("qwen", "plain"), "data.template must be qwen or plain"),
            (self.data.labels in ("official", "answers"), "data.labels must be official or answers"),
            (self.data.time_message in (True, False, "chat"), "data.time_message must be true, false or chat"),
            (0 <= self.data.frames_lowbound <= self.data.frames_upbound, "need 0 <= frames_lowbound <= frames_upbound"),
            (self.data.frames_upbound >= 1, "data.frames_upbound must be at least 1"),
            (bool(self.data.files) or self.data.synthetic is not None, "data needs files or a synthetic section"),
            (self.optim.micro_batch_size >= 1, "optim.micro_batch_size must be at least 1"),
            (
                self.optim.global_batch_size % self.optim.micro_batch_size == 0,
                "optim.global_batch_size must be a multiple of optim.micro_batch_size",
            ),
            (self.optim.schedule in ("cosine", "constant"), "optim.schedule must be cosine or constant"),
            (self.optim.epochs > 0 or self.optim.max_steps, "optim.epochs must be positive"),
            (
                self.optim.max_steps is None or self.optim.max_steps >= 1,
                "optim.max_steps (--max-steps) must be at least 1",
            ),
            (0 <= self.optim.warmup_ratio <= 1, "optim.warmup_ratio must be between 0 and 1"),
            (self.optim.warmup_steps is None or self.optim.warmup_steps >= 0, "optim.warmup_steps must be at least 0"),
            (self.optim.weight_decay >= 0, "optim.weight_decay must be at least 0"),
            (
                self.distributed.strategy in ("ddp", "fsdp2", "deepspeed"),
                "distributed.strategy must be ddp, fsdp2 or deepspeed",
            ),
            (self.lora is None or self.lora.r >= 1, "lora.r must be at least 1"),
            (
                self.distributed.zero_stage in (0, 1, 2),
                "distributed.zero_stage must be 0, 1 or 2 (fsdp2 shards parameters)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"stage {self.name}: {message}")


# ------------------------------------------------------------------------------------------ parsing


def load_config(
    path: str | Path, sets: dict[str, Any] | None = None, output: str | None = None, max_steps: int | None = None
) -> list[StageConfig]:
    """The stages of a YAML file, with `--set key.sub=value` overrides applied to every stage."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return expand_stages(raw, default_name=path.stem, sets=sets, output=output, max_steps=max_steps)


def expand_stages(
    raw: dict[str, Any],
    default_name: str = "train",
    sets: dict[str, Any] | None = None,
    output: str | None = None,
    max_steps: int | None = None,
) -> list[StageConfig]:
    raw = copy.deepcopy(raw)
    overrides = raw.pop("stages", None)
    if overrides is None:
        overrides = [{"name": raw.pop("name", default_name)}]
    if not isinstance(overrides, list) or not overrides or not all(isinstance(s, dict) for s in overrides):
        raise ConfigError("stages: must be a non-empty list of mappings")
    raw.pop("name", None)  # the run's name; each stage has its own
    stages = []
    for i, over in enumerate(overrides):
        merged = deep_merge(raw, over)
        merged.setdefault("name", f"stage{i + 1}")
        model_over = over.get("model") or {}
        if i > 0 and "path" not in model_over and "init" not in model_over:  # continue from the previous stage
            merged.setdefault("model", {})
            merged["model"]["init"] = None
            merged["model"]["path"] = None
        for key, value in (sets or {}).items():
            set_dotted(merged, key, value)
        if max_steps is not None:
            merged.setdefault("optim", {})["max_steps"] = max_steps
        if output is not None:
            merged.setdefault("output", {})["dir"] = output
        stage = parse(StageConfig, merged, where="")
        stages.append(stage)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}")
    for i, stage in enumerate(stages):
        stage.validate(first=i == 0)
    return stages


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[parts[-1]] = value


def parse(cls, value: Any, where: str):
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types are one-line errors."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"unknown setting {_join(where, unknown[0])} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, _join(where, k)) for k, v in value.items()}
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp, value: Any, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # the first type that takes the value (bool | str: true, or "chat")
            try:
                return _coerce(option, value, where)
            except ConfigError:
                pass
        return _coerce(inner[-1], value, where)
    if dataclasses.is_dataclass(tp):
        if tp is DataFile and isinstance(value, str):
            return DataFile(value)
        return parse(tp, value, where)
    if tp is Any:
        return value
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if tp is float:  # YAML reads 1e-5 (no dot) as a string
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if origin is list:
            if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
                if args and args[0] is DataFile and isinstance(value, (str, dict)):
                    value = [value]
                else:
                    raise TypeError
            return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}") from None
    return value


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))
