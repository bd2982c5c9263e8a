"""Hub ids: `owner/name`, `owner/name/subfolder`, `--revision`; only config, tokenizer and safetensors
are fetched (never zips, pickles or training leftovers), and broken configs / weights are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import longvid
from longvid.checkpoint import parse_hub_id, resolve
from longvid.errors import CheckpointError, ConfigError

TINY = Path(longvid.__file__).parent / "assets" / "tiny_model"
SUB = "VideoXL_weight_8"
# the Video-XL release's layout: weights in a subfolder, training leftovers beside them
LEFTOVERS = [
    "weight.zip",
    "rng_state_0.pth",
    "trainer_state.json",
    "README.md",
    f"{SUB}/optimizer.pt",
    f"{SUB}/rng_state_1.pth",
    f"{SUB}/training_args.bin",
    f"{SUB}/checkpoint-100/model.safetensors",
    "other/config.json",
]


def fake_repo(root: Path) -> Path:
    for f in TINY.iterdir():
        target = root / SUB / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    for name in LEFTOVERS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"must never be downloaded")
    return root


@pytest.fixture
def stub_hub(monkeypatch, tmp_path):
    """snapshot_download replaced by a copy out of a fake repo, filtered by huggingface_hub's own matcher."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    repo = fake_repo(tmp_path / "repo")
    calls = []

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, ignore_patterns=None, **kw):
        calls.append({"repo_id": repo_id, "revision": revision})
        files = [str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()]
        out = tmp_path / "snapshot"
        for name in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / name, out / name)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls, tmp_path / "snapshot"


def test_subfolder_and_revision_fetch_only_config_tokenizer_and_safetensors(stub_hub):
    calls, snapshot = stub_hub
    model = longvid.load(f"sy1998/Video_XL/{SUB}", revision="abc123")
    assert calls == [{"repo_id": "sy1998/Video_XL", "revision": "abc123"}]
    fetched = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    assert fetched == sorted(f"{SUB}/{f.name}" for f in TINY.iterdir())
    assert model.folder == snapshot / SUB and model.config.llm.hidden_size == 128


def test_revision_in_the_id_and_a_folder_without_config(stub_hub):
    calls, _ = stub_hub
    with pytest.raises(CheckpointError, match="holds no config.json .*owner/name/subfolder"):
        resolve("sy1998/Video_XL@v1")  # the root has no config.json: say where to look
    assert calls == [{"repo_id": "sy1998/Video_XL", "revision": "v1"}]


@pytest.mark.parametrize("text", ["a/b/../c", "a/b@", "a b/c", "a/b/c d"])
def test_malformed_hub_ids_are_one_line(text):
    with pytest.raises(CheckpointError):
        parse_hub_id(text)


def test_offline_cache_subfolder_through_the_cli(tmp_path):
    """A real huggingface_hub cache layout, read under HF_HUB_OFFLINE by the real CLI."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--owner--videoxl"
    fake_repo(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    video = tmp_path / "v.npy"
    import numpy as np

    np.save(video, np.zeros((8, 32, 32, 3), np.uint8))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "longvid",
            "info",
            str(video),
            "--fps",
            "4",
            "--model",
            f"owner/videoxl/{SUB}",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["model"]["name"] == f"owner/videoxl/{SUB}" and report["budget"]["visual_tokens"] == 128
    run = subprocess.run(
        [sys.executable, "-m", "longvid", "info", str(video), "--model", "owner/videoxl/nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr


def broken_checkpoint(tmp_path: Path, change) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(TINY, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(cfg)))
    return folder


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda c: [c], "is a JSON list"),
        (lambda c: {**c, "hidden_size": "big"}, "hidden_size must be a number"),
        (lambda c: {**c, "num_hidden_layers": [4]}, "num_hidden_layers must be a number"),
        (
            lambda c: {**c, "model_type": "gpt9", "architectures": ["Gpt9ForCausalLM"], "mm_vision_tower": "x"},
            "unsupported model",
        ),
        (lambda c: {**c, "architectures": "VideoChatFlashQwenForCausalLM"}, "architectures must be a list"),
    ],
)
def test_broken_configs_are_one_clear_error(tmp_path, change, needle):
    with pytest.raises((CheckpointError, ConfigError), match=needle):
        longvid.load(broken_checkpoint(tmp_path, change))


def test_int8_weights_are_refused(tmp_path):
    folder = broken_checkpoint(tmp_path, lambda c: c)
    tensors = load_file(folder / "model.safetensors")
    save_file(
        {k: (v * 10).to(torch.int8) if v.is_floating_point() else v for k, v in tensors.items()},
        folder / "model.safetensors",
    )
    with pytest.raises(CheckpointError, match="int8; quantized checkpoints are not supported"):
        longvid.load(folder)
