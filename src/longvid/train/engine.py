"""The training loop: stages in order, each a fixed number of optimizer steps over global batches.

One optimizer step = one global batch (`optim.global_batch_size` samples over all processes), run as
`global_batch_size / (micro_batch_size * processes)` micro-batches per process. Each micro-batch's
loss is the *sum* of token losses; after the last one the gradients are scaled by processes / (all
supervised tokens of the global batch). So the step is the mean over every supervised token of the
global batch, whatever the process count or micro-batch split: 1 process and N give the same loss.

Resuming restores weights, optimizer, scheduler and every process's RNG, and the data continue at the
next global batch (the batch order depends only on seed, epoch and step).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_tokenizer, read_config, resolve
from ..errors import ConfigError
from ..models import to_dtype
from ..vision import SquashProcessor
from .attributes import AttributeModule, attribute_batches, cards_spec, is_cards
from .checkpointing import (
    STATE_DIR,
    building,
    commit,
    latest_checkpoint,
    prune,
    read_state,
    rng_state,
    set_rng_state,
    step_folder,
    temp_folder,
    write_model_files,
)
from .config import StageConfig, load_config
from .data import Batch, GlobalBatches, MicroBatches, TrainDataset, read_records, unbatched
from .distributed import Dist
from .lora import inject, merge
from .metrics import MetricsLog
from .module import LoadedModel, TrainingModule, load_for_training, resolution_overrides, trained_state
from .toy import folder_for, generate, synthetic_specs

FINAL_STATE = "trainer_state.json"


@dataclass
class StageResult:
    name: str
    steps: int  # optimizer steps of the stage
    global_step: int  # steps of all stages so far
    final: Path
    losses: list[float] = field(default_factory=list)  # of the steps this call ran
    skipped: int = 0
    module: TrainingModule | None = None  # the trained module (kept only when asked)


def train(
    config: str | Path,
    output: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    sets: dict[str, Any] | None = None,
    keep_module: bool = False,
) -> list[StageResult]:
    """`longvid train CONFIG.yaml`: run every stage of the file (see longvid.train.config)."""
    stages = load_config(config, sets=sets, output=output, max_steps=max_steps)
    return run(stages, resume=resume, keep_module=keep_module)


def run(stages: list[StageConfig], resume: bool = False, keep_module: bool = False) -> list[StageResult]:
    """Run the stages (skipping those a resumed run already finished); the caller's torch threads and
    RNG state are left as they were."""
    threads, rng = torch.get_num_threads(), rng_state()
    try:
        return _run(stages, resume, keep_module)
    finally:
        torch.set_num_threads(threads)
        set_rng_state(rng)


def _run(stages: list[StageConfig], resume: bool, keep_module: bool) -> list[StageResult]:
    dist = Dist.setup(stages[0].distributed.strategy)
    run_dir = Path(stages[0].output.dir)
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=dist.is_main)
    if not resume and (
        (run_dir / "metrics.jsonl").exists()
        or any(run_dir.glob("checkpoints/step-*"))
        or any(run_dir.glob("*/checkpoints/step-*"))
    ):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output")
    results: list[StageResult] = []
    global_step = 0
    previous: Path | None = None
    finals = [(run_dir if len(stages) == 1 else run_dir / s.name) / "final" / FINAL_STATE for s in stages]
    if resume and all(f.is_file() for f in finals) and dist.is_main:
        steps = json.loads(finals[-1].read_text()).get("global_step", "?")
        say(
            f"nothing to resume: the run in {run_dir} already finished ({steps} steps); --max-steps counts a "
            f"stage's total steps and does not extend a finished stage (train from {finals[-1].parent} instead)"
        )
    for index, stage in enumerate(stages):
        stage_dir = run_dir if len(stages) == 1 else run_dir / stage.name
        done = stage_dir / "final" / FINAL_STATE
        if resume and done.is_file():
            info = json.loads(done.read_text())
            global_step = int(info["global_step"])
            results.append(StageResult(stage.name, int(info["steps"]), global_step, stage_dir / "final"))
        else:
            dist.strategy = stage.distributed.strategy
            if stage.threads:
                torch.set_num_threads(stage.threads)
            runner = StageRunner(stage, index, run_dir, stage_dir, previous, dist, metrics, global_step)
            results.append(runner.run(resume, keep_module))
            global_step = results[-1].global_step
        previous = stage_dir / "final"
    if dist.is_main and stages[-1].output.plot:
        metrics.plot(run_dir / "loss.png")
    dist.barrier()
    return results


def lr_schedule(total: int, warmup: int, min_ratio: float = 0.0, constant: bool = False):
    """LR multiplier per step (transformers' get_cosine_schedule_with_warmup, optionally with a floor)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if constant:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StageRunner:
    def __init__(
        self,
        stage: StageConfig,
        index: int,
        run_dir: Path,
        stage_dir: Path,
        previous: Path | None,
        dist: Dist,
        metrics: MetricsLog,
        global_start: int,
    ):
        self.stage, self.index = stage, index
        self.run_dir, self.stage_dir = run_dir, stage_dir
        self.previous = previous
        self.dist = dist
        self.metrics = metrics
        self.global_start = global_start
        self.skipped = 0

    # ---------------------------------------------------------------- setup
    def source(self) -> Path:
        """The checkpoint this stage starts from (creating the random tiny one for `model.init`)."""
        spec = self.stage.model
        if spec.init is not None:
            key = hashlib.sha1(json.dumps(spec.init, sort_keys=True).encode()).hexdigest()[:10]
            folder = self.run_dir / f"init-{key}"
            if self.dist.is_main and not (folder / "config.json").is_file():
                make_tiny(folder, spec.init)
            self.dist.barrier()
            return folder
        if spec.path is None:
            return self.previous
        return resolve(spec.path)

    def overrides(self, source: Path) -> dict[str, Any]:
        over = dict(self.stage.model.set)
        if self.stage.model.resolution:
            over.update(resolution_overrides({**read_config(resolve(source)), **over}, self.stage.model.resolution))
        return over

    def load_model(self, resume_from: Path | None) -> LoadedModel:
        stage = self.stage
        source = self.source()
        if resume_from is not None:  # this stage's own weights (and adapter) at the checkpoint
            loaded = load_for_training(resume_from, base=str(source) if stage.lora else None)
            loaded.files_from = source  # checkpoints come and go; the tokenizer stays with the source
            return loaded
        loaded = load_for_training(source, self.overrides(source), layers=stage.model.layers)
        if loaded.lora is not None:  # the source is a LoRA folder: continue from its merged weights
            merge(loaded.model)
            loaded.lora = None
        if stage.lora is not None:
            torch.manual_seed(stage.seed)  # the same adapter init on every process
            inject(loaded.model, stage.lora)
            loaded.lora, loaded.base = stage.lora, str(Path(source).resolve())
        return loaded

    def records(self) -> list:
        """Every record of the stage, validated up front (a malformed one stops the run here)."""
        spec = self.stage.data
        records = []
        for synthetic in synthetic_specs(spec.synthetic):
            folder = folder_for(self.run_dir / "data", synthetic)
            if self.dist.is_main:
                generate(folder, synthetic)
            self.dist.barrier()
            records += read_records(folder / "records.jsonl", folder)
        for f in spec.files:
            records += read_records(Path(f.path), Path(f.root if f.root is not None else spec.root))
        return records

    # ---------------------------------------------------------------- run
    def run(self, resume: bool, keep_module: bool) -> StageResult:
        stage, dist = self.stage, self.dist
        seed_everything(stage.seed)
        cards = is_cards(stage.data.synthetic)  # vision pre-training (train/attributes.py) instead of the LM loss
        records = [] if cards else self.records()
        ckpt = latest_checkpoint(self.stage_dir) if resume else None
        state = read_state(ckpt) if ckpt else None
        loaded = self.load_model(ckpt)
        module = AttributeModule(loaded.model) if cards else TrainingModule(loaded.model)
        module.configure(stage)
        if stage.model.resolution and module.model.config.vision.image_size != stage.model.resolution:
            raise ConfigError(
                f"model.resolution {stage.model.resolution} but the tower runs at "
                f"{module.model.config.vision.image_size}"
            )
        tokenizer = load_tokenizer(loaded.files_from)
        accum = stage.accumulation(dist.world)
        start = int(state["step"]) if state else 0
        if cards:
            if not stage.optim.max_steps:
                raise ConfigError(f"stage {stage.name}: the cards task needs optim.max_steps")
            total = stage.optim.max_steps
            layout = module.layout()
            dataset = None
            batches = attribute_batches(
                cards_spec(stage.data.synthetic),
                SquashProcessor(layout.image_size),
                layout.frames_per_clip,
                stage.optim.micro_batch_size,
                stage.seed,
                dist.rank,
                dist.world,
                start,
                total,
                accum,
            )
        else:
            max_length = stage.data.max_length or module.model.config.max_length
            dataset = TrainDataset(records, tokenizer, stage.data, module.layout(), max_length)
            schedule = GlobalBatches(
                [dataset.length(i) for i in range(len(dataset))],
                stage.optim.global_batch_size,
                stage.optim.micro_batch_size,
                stage.seed,
                stage.data.group_by_length,
            )
            total = stage.optim.max_steps or math.ceil(stage.optim.epochs * schedule.steps_per_epoch)
        self.skipped = int(state.get("skipped", 0)) if state else 0
        self.metrics.rewind(self.global_start + start)

        model = dist.wrap(module)
        optimizer = torch.optim.AdamW(module.param_groups(stage), betas=tuple(stage.optim.betas), eps=stage.optim.eps)
        warmup = (
            stage.optim.warmup_steps
            if stage.optim.warmup_steps is not None
            else math.ceil(stage.optim.warmup_ratio * total)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_schedule(total, warmup, stage.optim.min_lr_ratio, stage.optim.schedule == "constant")
        )
        if dist.strategy == "deepspeed":
            model = dist.deepspeed(module, optimizer, stage, accum)
        if ckpt is not None:
            if dist.strategy == "deepspeed":
                model.load_checkpoint(str(ckpt / STATE_DIR / "deepspeed"), tag="state", load_lr_scheduler_states=False)
            else:
                dist.load_optimizer_state(
                    model, optimizer, torch.load(ckpt / STATE_DIR / "optimizer.pt", weights_only=False)
                )
            scheduler.load_state_dict(torch.load(ckpt / STATE_DIR / "scheduler.pt", weights_only=False))

        if not cards:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            micro = MicroBatches(dataset, schedule, dist.rank, dist.world, start, total, pad_id)
            workers = stage.data.num_workers
            loader = torch.utils.data.DataLoader(
                micro,
                batch_size=None,
                shuffle=False,
                num_workers=workers,
                collate_fn=unbatched,
                prefetch_factor=2 if workers else None,
                generator=torch.Generator().manual_seed(stage.seed),
            )
            batches = iter(loader)
        if ckpt is not None:  # after the loader started: its workers must not shift the restored RNG
            rng_file = ckpt / STATE_DIR / f"rng-rank{dist.rank}.pt"
            if rng_file.is_file():
                set_rng_state(torch.load(rng_file, weights_only=False))
            else:
                seed_everything(stage.seed + 1000 * start + dist.rank)
        elif dist.rank:
            seed_everything(stage.seed + dist.rank)  # dropout differs per process, as in any DP run

        ctx = Context(model, module, optimizer, scheduler, loaded, accum, total)
        if dist.is_main:
            what = "generated card clips" if dataset is None else f"{len(dataset)} records"
            say(
                f"stage {stage.name}: {what}, {total} steps of {stage.optim.global_batch_size} "
                f"samples ({dist.world} process{'es' if dist.world > 1 else ''} x {accum} micro-batches of "
                f"{stage.optim.micro_batch_size}, {dist.strategy if dist.distributed else 'single process'})"
                + (f", resuming after step {start}" if start else "")
            )
        losses = self.loop(ctx, batches, start)
        if self.skipped and dist.is_main:
            say(f"stage {stage.name}: {self.skipped} sample(s) skipped (missing or unreadable media)")
        final = self.export_final(ctx)
        return StageResult(
            stage.name, total, self.global_start + total, final, losses, self.skipped, module if keep_module else None
        )

    def loop(self, ctx: Context, batches: Iterator, start: int) -> list[float]:
        stage, dist = self.stage, self.dist
        losses = []
        bar = progress(ctx.total, start, stage.name, dist.is_main)
        t_start = time.perf_counter()
        for step in range(start, ctx.total):
            t0 = time.perf_counter()
            lrs = {g["name"]: lr for g, lr in zip(ctx.optimizer.param_groups, ctx.scheduler.get_last_lr())}
            loss, norm, counts = self.optimizer_step(ctx, batches)
            lr = max(lrs.values())
            done = step + 1
            losses.append(loss)
            record = {
                "step": self.global_start + done,
                "stage": stage.name,
                "stage_step": done,
                "loss": loss if math.isfinite(loss) else None,
                "lr": max(lrs.values()),
                "lrs": lrs,
                "grad_norm": norm,
                "tokens": int(counts[1]),
                "samples": int(counts[2]),
                "skipped": self.skipped,
                "seconds": round(time.perf_counter() - t0, 4),
            }
            self.metrics.write(record)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
            elif dist.is_main and (done % max(stage.output.log_every, 1) == 0 or done == ctx.total):
                rate = (time.perf_counter() - t_start) / (done - start)
                say(f"step {done}/{ctx.total}  loss {loss:.4f}  lr {lr:.2e}  grad {norm:.3f}  {rate:.2f} s/step")
            if stage.output.save_every and done % stage.output.save_every == 0 and done < ctx.total:
                self.save_step(ctx, done)
        if bar is not None:
            bar.close()
        return losses

    def autocast(self):
        """bf16 compute over fp32 master weights (a no-op in fp32)."""
        if self.stage.model.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)

    def next_batch(self, batches: Iterator) -> Batch:
        batch = next(batches)
        for reason in batch.skipped:
            self.skipped += 1
            say(f"warning: skipped {reason}", rank=self.dist.rank if self.dist.distributed else None)
        return batch

    def optimizer_step(self, ctx: Context, batches: Iterator) -> tuple[float, float, list[float]]:
        """One global batch: forward / backward over this process's micro-batches, then one update.
        Returns (mean loss over all supervised tokens, gradient norm, summed counts)."""
        if self.dist.strategy == "deepspeed":
            return self.deepspeed_step(ctx, batches)
        dist = self.dist
        ctx.model.train()
        loss_sum, targets, samples, skipped = 0.0, 0, 0, 0
        for j in range(ctx.accum):
            batch = self.next_batch(batches)
            inputs = batch.model_inputs(dist.device)
            with dist.sync_gradients(ctx.model, sync=j == ctx.accum - 1):
                with self.autocast():
                    loss = ctx.model(**inputs)
                loss.backward()
            loss_sum += float(loss.detach())
            targets += batch.num_targets
            samples += batch.num_samples
            skipped += len(batch.skipped)
        counts = dist.all_sum([loss_sum, targets, samples, skipped])
        self.skipped += int(counts[3]) - skipped  # the other processes' skips
        params = [p for p in ctx.model.parameters() if p.grad is not None]
        if counts[1] == 0:  # nothing supervised in the whole global batch: no update
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.scheduler.step()
            return float("nan"), 0.0, counts
        scale = dist.world / counts[1]  # DDP / FSDP2 averaged over processes: undo, then divide by all tokens
        for p in params:
            p.grad.mul_(scale)
        max_norm = self.stage.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        ctx.optimizer.step()
        ctx.scheduler.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        return counts[0] / counts[1], dist.total_norm(norm), counts

    def deepspeed_step(self, ctx: Context, batches: Iterator) -> tuple[float, float, list[float]]:
        """The same step through a DeepSpeed engine, which scales by 1 / (micro-batches x processes) itself:
        the step's micro-batches are loaded first so that each loss can be divided by all its tokens."""
        dist, engine = self.dist, ctx.model
        engine.train()
        micro = [self.next_batch(batches) for _ in range(ctx.accum)]
        local = [
            sum(b.num_targets for b in micro),
            sum(b.num_samples for b in micro),
            sum(len(b.skipped) for b in micro),
        ]
        targets, samples, skipped = dist.all_sum(local)
        self.skipped += int(skipped) - local[2]
        scale = ctx.accum * dist.world / max(targets, 1)
        loss_sum = 0.0
        for batch in micro:
            with self.autocast():
                loss = engine(**batch.model_inputs(dist.device))
            engine.backward(loss * scale)
            engine.step()
            loss_sum += float(loss.detach())
        ctx.scheduler.step()
        total = dist.all_sum([loss_sum])[0]
        norm = engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else 0.0
        return (total / targets if targets else float("nan")), norm, [total, targets, samples, skipped]

    # ---------------------------------------------------------------- checkpoints
    def trained(self, ctx: Context) -> dict[str, torch.Tensor]:
        """What the checkpoint keeps, gathered on the main process (collective)."""
        state = self.dist.model_state(ctx.model)
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}  # no probe heads
        return trained_state(ctx.module.model, state, ctx.loaded.lora is not None) if self.dist.is_main else {}

    def save_step(self, ctx: Context, step: int) -> None:
        dist = self.dist
        final = step_folder(self.stage_dir, step)
        tmp = temp_folder(final)
        deepspeed = dist.strategy == "deepspeed"
        state = self.trained(ctx)
        optim = None if deepspeed else dist.optimizer_state(ctx.model, ctx.optimizer)
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / STATE_DIR).mkdir(parents=True)
        dist.barrier()
        torch.save(rng_state(), tmp / STATE_DIR / f"rng-rank{dist.rank}.pt")
        if deepspeed:  # its own sharded format for weights + optimizer, written by every process
            ctx.model.save_checkpoint(str(tmp / STATE_DIR / "deepspeed"), tag="state")
        if dist.is_main:
            write_model_files(
                tmp, ctx.module.model, ctx.loaded.config, state, ctx.loaded.files_from, ctx.loaded.lora, ctx.loaded.base
            )
            if optim is not None:
                torch.save(optim, tmp / STATE_DIR / "optimizer.pt")
            torch.save(ctx.scheduler.state_dict(), tmp / STATE_DIR / "scheduler.pt")
        dist.barrier()
        if dist.is_main:
            info = {
                "stage": self.stage.name,
                "stage_index": self.index,
                "step": step,
                "global_step": self.global_start + step,
                "total_steps": ctx.total,
                "world_size": dist.world,
                "strategy": dist.strategy,
                "skipped": self.skipped,
                "base": ctx.loaded.base,
            }
            (tmp / STATE_DIR / "state.json").write_text(json.dumps(info, indent=2) + "\n")
            commit(tmp, final)
            prune(self.stage_dir, self.stage.output.keep_last)
        dist.barrier()

    def export_final(self, ctx: Context) -> Path:
        final = self.stage_dir / "final"
        state = self.trained(ctx)
        if self.dist.is_main:
            dtype = self.stage.output.save_dtype or ctx.loaded.config.get("torch_dtype") or "float32"
            info = {
                "stage": self.stage.name,
                "steps": ctx.total,
                "global_step": self.global_start + ctx.total,
                "skipped": self.skipped,
            }
            with building(final) as tmp:
                write_model_files(
                    tmp,
                    ctx.module.model,
                    ctx.loaded.config,
                    state,
                    ctx.loaded.files_from,
                    ctx.loaded.lora,
                    ctx.loaded.base,
                    dtype=to_dtype(dtype),
                )
                (tmp / FINAL_STATE).write_text(json.dumps(info, indent=2) + "\n")
        self.dist.barrier()
        return final


@dataclass
class Context:
    """What one stage's loop works with."""

    model: torch.nn.Module  # as wrapped for the strategy (DDP, FSDP2, DeepSpeed engine) or plain
    module: TrainingModule  # unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loaded: LoadedModel
    accum: int  # micro-batches per process and step
    total: int  # optimizer steps of the stage


def make_tiny(folder: Path, init: dict[str, Any]) -> None:
    """`model.init`: a random tiny VideoChat-Flash checkpoint (longvid.tiny), written atomically."""
    from ..tiny import make_checkpoint, tiny_videochat_flash_config

    kwargs = dict(init)
    seed = int(kwargs.pop("seed", 0))
    vocab = int(kwargs.pop("vocab_size", 512))
    tokenizer = kwargs.pop("tokenizer", "generic")
    if tokenizer not in ("generic", "needle"):
        raise ConfigError(f"model.init.tokenizer must be generic or needle, not {tokenizer!r}")
    corpus, added = None, None
    if tokenizer == "needle":  # trained on the needle task's text, with the option markers as whole tokens
        from ..data.needles import OPTION_MARKERS
        from ..data.needles import corpus as needle_corpus

        corpus, added = needle_corpus(), list(OPTION_MARKERS)
    try:
        cfg = tiny_videochat_flash_config(vocab, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model.init: {e}") from None
    with building(folder) as tmp:
        make_checkpoint(tmp, cfg, seed=seed, corpus=corpus, added=added)


def progress(total: int, start: int, name: str, main: bool):
    if not (main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True, file=sys.stderr)


def say(message: str, rank: int | None = None) -> None:
    prefix = f"[rank {rank}] " if rank is not None else ""
    print(prefix + message, file=sys.stderr, flush=True)
