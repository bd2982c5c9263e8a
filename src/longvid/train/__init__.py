"""Training VideoChat-Flash models: multi-stage short-to-long recipes, LoRA, DDP / FSDP2.

    longvid train examples/train/tiny.yaml --output runs/tiny             # 1 process
    longvid train examples/train/tiny.yaml --output runs/tiny --nproc 2   # or torchrun / accelerate launch

config.py     stages as data (YAML)              data.py           records -> tokens, labels, pixels -> batches
module.py     loading, what trains, the loss     distributed.py    processes, DDP / FSDP2, collectives
engine.py     the loop, stage by stage           checkpointing.py  released-format checkpoints + resume state
lora.py       peft adapters, merge               toy.py            generated data for tests and the tiny example
metrics.py    metrics.jsonl and the loss plot    commands.py       `longvid train`, `longvid merge-lora`

Nothing heavy is imported here: the CLI imports `longvid.train.commands` at start-up.
"""

__all__ = ["StageConfig", "StageResult", "load_config", "run", "train"]


def __getattr__(name: str):
    if name in ("StageConfig", "load_config"):
        from . import config

        return getattr(config, name)
    if name in ("StageResult", "run", "train"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
