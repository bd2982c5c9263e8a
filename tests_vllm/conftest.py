"""Fixtures for the vLLM plugin's tests (their own environment: `make test-vllm` builds .venv-vllm).

The checkpoint is a tiny random VideoChat-Flash with head_dim 32 (vLLM's CPU attention takes head sizes
32/64/80/96/112/128 only, so the main suite's head_dim-16 model cannot run there), float32 throughout.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("LONGVID_HOME", tempfile.mkdtemp(prefix="longvid-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # LLM(...) in this process: starts in seconds

# vLLM's CPU backend reserves this fraction of host memory (its KV cache); the tiny model needs little
ENGINE_ARGS = {"gpu_memory_utilization": 0.1, "max_model_len": 2048, "enforce_eager": True, "seed": 0}
MAX_TOKENS = 12
QUESTIONS = ["Describe the video.", "What shape moves across the frames?", "What color is it?", "Where does it go?"]


def tiny_config(**extra):
    from longvid.tiny import tiny_videochat_flash_config

    return tiny_videochat_flash_config(512, hidden=128, heads=4, kv_heads=2, intermediate=256, **extra)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    from longvid.tiny import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny32") / "ckpt", tiny_config(), seed=3)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Path:
    """A 4 s H.264 clip, a longer one (the default sampler's 64 frames) and a PNG image."""
    from PIL import Image

    from longvid.data.synthetic import moving_shapes, write_video

    folder = tmp_path_factory.mktemp("media")
    write_video(folder / "clip.mp4", moving_shapes(40, 48, 64), fps=10, gop=12)
    write_video(folder / "long.mp4", moving_shapes(90, 48, 64, seed=1), fps=10, gop=12)
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "image.png")
    return folder


@pytest.fixture(scope="session")
def model(checkpoint):
    import longvid

    return longvid.load(checkpoint, dtype="float32")


@pytest.fixture(scope="session")
def llm(checkpoint):
    from vllm import LLM

    engine = LLM(model=str(checkpoint), dtype="float32", enable_mm_embeds=True, **ENGINE_ARGS)
    yield engine
    engine.llm_engine.engine_core.shutdown()


def longvid_ids(model, video, question: str, **sampling) -> list[int]:
    """longvid's own greedy answer (repetition penalty off: vLLM applies it over the prompt too)."""
    gen = {"do_sample": False, "repetition_penalty": 1.0}
    return model.ask(video, question, max_new_tokens=MAX_TOKENS, gen=gen, **sampling).token_ids
