"""Processes, wrapping and collectives, on torch.distributed.

Launch with anything that sets the usual environment (RANK, WORLD_SIZE, MASTER_ADDR, ...):
`longvid train --nproc N`, `torchrun --nproc_per_node N -m longvid train` or `accelerate launch
--multi_gpu --num_processes N -m longvid train` (on CPU too: `--cpu` makes accelerate start one process).
One process needs no launcher. The backend is gloo on CPU and nccl on GPUs.

* ddp: `DistributedDataParallel`; gradients are all-reduced on the last micro-batch of a step.
* fsdp2: `fully_shard` on every decoder layer, then on the root (towers, projector, embeddings, head).
* deepspeed: ZeRO stage 1 or 2 through `deepspeed.initialize`, when deepspeed is installed (optional;
  the official recipe used ZeRO-1). For sharded parameters use fsdp2.

Checkpoints always hold full tensors (gathered with torch.distributed.checkpoint.state_dict), so a run
saved with ddp / fsdp2 and one process count resumes with either strategy and any count. DeepSpeed
keeps the optimizer in its own format: a DeepSpeed run resumes with DeepSpeed and the same process count.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ..errors import ConfigError

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "ddp"
    device: torch.device = torch.device("cpu")

    @classmethod
    def setup(cls, strategy: str) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if strategy == "deepspeed":
            try:
                import deepspeed  # noqa: F401
            except ImportError:
                raise ConfigError("distributed.strategy deepspeed needs `pip install deepspeed`") from None
            if world == 1:  # deepspeed wants a process group even for one process
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(_free_port()))
                os.environ.setdefault("RANK", "0")
                os.environ.setdefault("WORLD_SIZE", "1")
                os.environ.setdefault("LOCAL_RANK", "0")
        if (world > 1 or strategy == "deepspeed") and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local, strategy, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    # ---------------------------------------------------------------- wrapping
    def wrap(self, module: nn.Module) -> nn.Module:
        module.to(self.device)
        if not self.distributed or self.strategy == "deepspeed":
            return module
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        for unit in module.shard_units():
            fully_shard(unit, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module

    def deepspeed(self, module: nn.Module, optimizer, stage, accum: int):
        """A DeepSpeed engine around `module` and a torch optimizer (ZeRO stage from the config)."""
        import deepspeed

        config = {
            "train_micro_batch_size_per_gpu": stage.optim.micro_batch_size,
            "gradient_accumulation_steps": accum,
            "train_batch_size": stage.optim.global_batch_size,
            "zero_optimization": {"stage": stage.distributed.zero_stage},
            "gradient_clipping": stage.optim.max_grad_norm or 0.0,
            "bf16": {"enabled": stage.model.precision == "bf16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31,
        }
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
        return engine

    def sync_gradients(self, model: nn.Module, sync: bool):
        """Context for one micro-batch: gradients are reduced across processes only when `sync`."""
        if not self.distributed or sync:
            if self.distributed and self.strategy == "fsdp2":
                model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.strategy == "ddp":
            return model.no_sync()
        if self.strategy == "fsdp2":
            model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- state (collective: every process calls)
    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full tensors, on the main process (empty elsewhere)."""
        if self.strategy == "deepspeed":  # ZeRO 1-2: every process holds all weights
            return {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()} if self.is_main else {}
        return get_model_state_dict(model, options=FULL)

    def optimizer_state(self, model: nn.Module, optimizer) -> dict:
        return get_optimizer_state_dict(model, optimizer, options=FULL)

    def load_optimizer_state(self, model: nn.Module, optimizer, state: dict) -> None:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def total_norm(self, norm) -> float:
        """The gradient norm from clip_grad_norm_ as a number (FSDP2 returns a DTensor)."""
        full = getattr(norm, "full_tensor", None)
        return float(full() if full is not None else norm)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
