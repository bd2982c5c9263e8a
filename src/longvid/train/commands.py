"""`longvid train` and `longvid merge-lora` (cli.py maps the names to these functions)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..flags import parse_pairs
from ..launch import torchrun


def train(
    config: Path = typer.Argument(..., help="Stage config (YAML), e.g. examples/train/tiny.yaml."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Run folder (default: output.dir)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps per stage (overrides optim)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's latest checkpoint."),
    nproc: int = typer.Option(1, "--nproc", help="Processes to launch on this machine (via torch.distributed.run)."),
    sets: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a setting, e.g. --set optim.micro_batch_size=2."
    ),
):
    """Train a VideoChat-Flash model: one stage or a curriculum of stages, on 1 or N processes.

    Writes OUTPUT/metrics.jsonl (one line per optimizer step), resumable checkpoints in the released
    format under OUTPUT/checkpoints, the final weights in OUTPUT/final and OUTPUT/loss.png.

    N processes: --nproc N, torchrun --nproc_per_node N -m longvid train ..., or accelerate launch
    --multi_gpu --num_processes N -m longvid train ...; the same config serves any process count.
    """
    from ..errors import ConfigError
    from .config import load_config
    from .data import read_records
    from .engine import train as run_training

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {max_steps}")
    overrides = parse_pairs(sets, "--set")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        # a bad config or record fails here, once, with exit code 2
        for stage in load_config(config, overrides, output, max_steps):
            stage.accumulation(nproc)
            for f in stage.data.files:
                read_records(Path(f.path), Path(f.root if f.root is not None else stage.data.root))
        args = [
            str(config),
            *(["--output", output] if output else []),
            *(["--resume"] if resume else []),
            *(["--max-steps", str(max_steps)] if max_steps is not None else []),
            *[arg for pair in sets or [] for arg in ("--set", pair)],
        ]
        raise typer.Exit(torchrun("train", nproc, args))
    run_training(config, output=output, max_steps=max_steps, resume=resume, sets=overrides)


def merge_lora(
    adapter: Path = typer.Argument(..., help="A LoRA folder written by `longvid train` (adapter_config.json ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the merged checkpoint."),
    base: Optional[str] = typer.Option(None, "--base", help="Base checkpoint (default: the one the adapter names)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Saved dtype (default: the config's torch_dtype)."),
):
    """Fold a LoRA adapter into its base weights: a full checkpoint in the released format."""
    from ..errors import CheckpointError
    from .checkpointing import merge_adapter
    from .lora import ADAPTER_CONFIG

    if not (adapter / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{adapter} is not a LoRA folder (no {ADAPTER_CONFIG})")
    merge_adapter(adapter, output, base, dtype)
    print(str(output))
