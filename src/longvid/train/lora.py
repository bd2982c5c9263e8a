"""LoRA on the LLM through peft, saved in peft's own adapter format over the released module names.

An adapter folder holds `adapter_config.json` + `adapter_model.safetensors` (keys
`base_model.model.<released module>.lora_{A,B}.weight`, what peft writes for the official model), the
weights of modules trained in full beside the adapter in `non_lora_trainables.safetensors` (LLaVA's
convention, released key names), and the model's config.json and tokenizer. `merge` folds the adapter
into the base weights; `longvid merge-lora` turns a folder into a full released-format checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .config import LoraSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA = "non_lora_trainables.safetensors"
PEFT_PREFIX = "base_model.model."


def target_pattern(spec: LoraSpec) -> str:
    names = "|".join(re.escape(t) for t in spec.targets)
    return rf"llm\.model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs peft: pip install 'longvid[train]'") from None
    return peft


def inject(model: nn.Module, spec: LoraSpec) -> None:
    """Add LoRA adapters to the LLM linears named in `spec.targets` (in place); only they train in the LLM."""
    peft = _peft()

    if not spec.targets:
        raise ConfigError("lora.targets is empty")
    pattern = target_pattern(spec)
    if not any(re.fullmatch(pattern, name) for name, _ in model.named_modules()):
        raise ConfigError(
            f"lora.targets {spec.targets} match no LLM linear layer (known: q_proj, k_proj, v_proj, "
            "o_proj, gate_proj, up_proj, down_proj)"
        )
    config = peft.LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=pattern, bias="none"
    )
    peft.inject_adapter_in_model(config, model)


def is_lora_key(name: str) -> bool:
    return ".lora_" in name


def base_name(name: str) -> str:
    """Our parameter name with peft's wrapper level removed: `...q_proj.base_layer.weight` -> `...q_proj.weight`."""
    return name.replace(".base_layer.", ".")


def adapter_tensors(state: dict[str, torch.Tensor], to_release_key) -> dict[str, torch.Tensor]:
    """LoRA weights under peft's key names for the official model tree."""
    out = {}
    for name, value in state.items():
        if not is_lora_key(name):
            continue
        module, _, rest = name.partition(".lora_")  # llm.model.layers.0.self_attn.q_proj / A.default.weight
        which = rest.split(".")[0]
        release_module = to_release_key(module + ".weight")[: -len(".weight")]
        out[f"{PEFT_PREFIX}{release_module}.lora_{which}.weight"] = value
    return out


def load_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put peft-named adapter weights into a model that `inject` prepared."""
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise CheckpointError(f"unexpected adapter weight {key}")
        module, _, rest = key[len(PEFT_PREFIX) :].rpartition(".lora_")
        ours = (
            model.from_release_key(module + ".weight")[: -len(".weight")] + f".lora_{rest.split('.')[0]}.default.weight"
        )
        if ours not in params:
            raise CheckpointError(f"adapter weight {key} matches no LoRA layer of this model")
        if params[ours].shape != value.shape:
            raise CheckpointError(
                f"adapter weight {key} has shape {tuple(value.shape)}, expected "
                f"{tuple(params[ours].shape)} (different lora.r?)"
            )
        with torch.no_grad():
            params[ours].copy_(value)


def adapter_config(spec: LoraSpec, base: str) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": list(spec.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "modules_to_save": None,
    }


def read_adapter_config(folder: Path) -> tuple[LoraSpec, str]:
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable {ADAPTER_CONFIG} in {folder}: {e}") from None
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_rslora"):
        raise CheckpointError(f"{folder}: only plain LoRA adapters are supported")
    targets = cfg.get("target_modules") or []
    spec = LoraSpec(
        r=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout", 0.0)),
        targets=[targets] if isinstance(targets, str) else list(targets),
    )
    return spec, str(cfg.get("base_model_name_or_path") or "")


def merge(model: nn.Module) -> None:
    """Fold every LoRA layer into its base linear (W += alpha/r * B @ A) and remove the wrappers."""
    layer_type = _peft().tuners.lora.LoraLayer
    for name, module in list(model.named_modules()):
        if isinstance(module, layer_type):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
