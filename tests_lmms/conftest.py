"""Tests of the lmms-eval plugin against the real lmms-eval package. They run in .venv-lmms (`make test-lmms`):
lmms-eval pins av<16 and pulls torchvision, so it cannot live in the main environment (README, "Evaluate")."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"  # the task datasets are local json files
os.environ.setdefault("LONGVID_HOME", tempfile.mkdtemp(prefix="longvid-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def short_video(tmp_path_factory) -> Path:
    """A 4 s, 10 fps H.264 file with B-frames."""
    from longvid.data.synthetic import moving_shapes, write_video

    return write_video(tmp_path_factory.mktemp("video") / "shapes.mp4", moving_shapes(40, 48, 64), fps=10, gop=12)
