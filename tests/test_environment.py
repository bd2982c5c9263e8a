"""The environment rules CI enforces: no torchvision / timm, no hub access during tests, parity required."""

import importlib.util
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO


def test_no_torchvision_or_timm():
    assert importlib.util.find_spec("torchvision") is None, "torchvision is CUDA-only here and breaks transformers"
    assert importlib.util.find_spec("timm") is None, "timm pulls torchvision"


def test_hub_access_is_refused_without_touching_the_network(monkeypatch, tmp_path):
    """Not `HF_HUB_OFFLINE == "1"` (conftest sets it, so that could not fail): a hub id that is not
    cached must fail with one clear error, and no socket may be opened trying."""
    import longvid
    from longvid.errors import CheckpointError

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access during tests")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="could not download someone/uncached"):
        longvid.load("someone/uncached-model")
    assert attempts == []


def test_ci_turns_missing_parity_fixtures_into_failures(tmp_path):
    assert "LONGVID_REQUIRE_PARITY=1" in (REPO / ".ci/run").read_text()
    env = {**os.environ, "LONGVID_SHARED": str(tmp_path), "LONGVID_REQUIRE_PARITY": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_parity_video_xl.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0 and "LONGVID_REQUIRE_PARITY=1 requires it" in run.stdout, run.stdout[-2000:]
