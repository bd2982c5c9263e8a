"""Shared test fixtures: tiny random checkpoints, synthetic videos, the parity fixtures in ../shared."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# weight digests (checkpoint.weights_digest) are remembered here, not in the user's ~/.cache
os.environ.setdefault("LONGVID_HOME", tempfile.mkdtemp(prefix="longvid-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LONGVID_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"


def missing_parity(path: Path) -> None:
    """Skip a test whose parity fixture is absent -- or fail it under LONGVID_REQUIRE_PARITY=1 (CI sets it),
    so a CI run without the fixtures cannot pass by skipping every parity test."""
    reason = f"parity fixture {path} not found (../shared/parity is only beside a developer checkout)"
    if os.environ.get("LONGVID_REQUIRE_PARITY") == "1":
        pytest.fail(reason + "; LONGVID_REQUIRE_PARITY=1 requires it", pytrace=False)
    pytest.skip(reason)


def parity_dir(name: str) -> Path:
    """The parity fixture folder, or skip (fail under LONGVID_REQUIRE_PARITY=1) when ../shared is absent."""
    path = PARITY / name
    if not (path / "expected" / "expected.npz").is_file():
        missing_parity(path)
    return path


@pytest.fixture(scope="session")
def vcf_fixture() -> Path:
    return parity_dir("videochat_flash_tiny")


@pytest.fixture(scope="session")
def vxl_fixture() -> Path:
    return parity_dir("video_xl_tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny VideoChat-Flash checkpoint in the released format."""
    from longvid.tiny import make_checkpoint, tiny_videochat_flash_config

    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", tiny_videochat_flash_config(512))


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    import longvid

    return longvid.load(tiny_checkpoint)


@pytest.fixture(scope="session")
def short_video(tmp_path_factory) -> Path:
    """A 4 s, 10 fps H.264 file with B-frames."""
    from longvid.data.synthetic import moving_shapes, write_video

    return write_video(tmp_path_factory.mktemp("video") / "shapes.mp4", moving_shapes(40, 48, 64), fps=10, gop=12)


@pytest.fixture
def random_frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 40, 56, 3), dtype=np.uint8)
