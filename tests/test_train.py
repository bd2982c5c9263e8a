"""Training: label masks, records, batching, LoRA, checkpoints in the released format, bad input; and
(subprocesses) 1 vs 2 processes with DDP and FSDP2, and kill -9 + resume reproducing the losses."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file as safe_load

import longvid
from conftest import PARITY, REPO, missing_parity
from longvid.checkpoint import load_tokenizer, read_weights
from longvid.cli import main
from longvid.errors import ConfigError, InputError
from longvid.prompt import IMAGE_TOKEN_INDEX, Conversation, time_message
from longvid.train import load_config, train
from longvid.train.config import DataSpec, deep_merge
from longvid.train.data import (
    IGNORE_INDEX,
    ChatEncoder,
    GlobalBatches,
    TrainDataset,
    VisualLayout,
    collate,
    read_records,
    with_image_first,
)
from longvid.train.lora import base_name, is_lora_key
from longvid.train.module import load_for_training
from longvid.train.toy import generate, synthetic_specs

TINY_INIT = {
    "vocab_size": 512,
    "hidden": 32,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "intermediate": 64,
    "image_size": 64,
    "patch": 8,
    "vision_dim": 32,
    "vision_depth": 2,
    "vision_heads": 4,
    "seed": 0,
}
SMALL: dict[str, Any] = {
    "name": "small",
    "seed": 0,
    "threads": 1,
    "model": {"init": TINY_INIT},
    "trainable": {"vision_tower": 1.0e-3, "projector": 1.0e-3, "llm": 1.0e-3},
    "data": {
        "synthetic": {"videos": 16, "images": 8, "frames": [4, 12], "size": 64, "fps": 4, "format": "npy"},
        "frames_upbound": 8,
        "num_workers": 1,
    },
    "optim": {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 8, "warmup_steps": 0},
    "output": {"dir": "runs/unused", "save_every": 2},
}


def write_config(folder: Path, changes: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(deep_merge(copy.deepcopy(SMALL), changes or {}), sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in metrics(run_dir)]


def part(release_key: str) -> str:
    for prefix in ("vision_tower", "mm_projector"):
        if release_key.startswith(f"model.{prefix}."):
            return prefix
    return "llm"


def changed_parts(before: Path, after: Path) -> set[str]:
    a, b = read_weights(before), read_weights(after)
    return {part(k) for k in a if not torch.equal(a[k].float(), b[k].float())}


def keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


# ------------------------------------------------------------------------------------------ prompt + labels


def test_training_string_and_label_masks_follow_the_official_trainer(tiny_checkpoint):
    tok = load_tokenizer(tiny_checkpoint)
    msg = time_message(4.0, 16)
    text = with_image_first("What color is the shape? <image>", msg)
    assert text == (
        "<image>\nThe video lasts for 4.00 seconds, and 16 frames are uniformly sampled from it. "
        "\nWhat color is the shape?"
    )
    encoder = ChatEncoder(tok, "You are a helpful assistant.")
    ids, labels = encoder.encode([("user", text), ("assistant", "The shape is red.")])
    # the token sequence is the inference prompt (ChatML, default system) plus the answer turn
    conv = Conversation()
    conv.add("user", text)
    conv.add("assistant", "The shape is red.")
    rendered = conv.render(add_generation_prompt=False)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    cut = ids.index(IMAGE_TOKEN_INDEX)
    assert tok.decode(ids[:cut]) + "<image>" + tok.decode(ids[cut + 1 :]) == rendered
    # system and user turns: only <|im_start|>, <|im_end|> and "\n" tokens are supervised
    specials = {
        tok.convert_tokens_to_ids("<|im_start|>"),
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok("\n", add_special_tokens=False).input_ids[0],
    }
    answer_start = len(ids) - len(
        tok("<|im_start|>assistant\nThe shape is red.<|im_end|>\n", add_special_tokens=False).input_ids
    )
    for i, (t, lab) in enumerate(zip(ids, labels)):
        if i >= answer_start:
            assert lab == t  # the whole assistant turn, header included
        else:
            assert lab == (t if t in specials else IGNORE_INDEX)
    assert sum(lab != IGNORE_INDEX for lab in labels[:answer_start]) >= 6
    # labels: answers supervises only the replies and their <|im_end|>
    ids2, labels2 = ChatEncoder(tok, "You are a helpful assistant.", labels="answers").encode(
        [("user", text), ("assistant", "The shape is red.")]
    )
    assert ids2 == ids
    assert [t for t in labels2 if t != IGNORE_INDEX] == tok(
        "The shape is red.<|im_end|>", add_special_tokens=False
    ).input_ids
    # images get no time message; a leading non-human turn is dropped like the official trainer
    assert with_image_first("<image>\nWhat is it?") == "<image>\nWhat is it?"


def test_records_fail_fast_with_their_line_number(tmp_path):
    good = {
        "id": "a",
        "video": "a.mp4",
        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}],
    }
    bad_cases = [
        (
            {"video": "a.mp4", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]},
            "exactly one <image>",
        ),
        ({"image": "a.png", "video": "a.mp4", "conversations": good["conversations"]}, "not both"),
        ({"conversations": [{"from": "human", "value": "Q"}]}, "no gpt answer"),
        ({"video": "a.mp4", "conversations": [{"from": "robot", "value": "x"}]}, 'unknown "from"'),
        ({"video": "a.mp4", "start": 5, "end": 2, "conversations": good["conversations"]}, 'after "start"'),
        ({"id": 1}, "conversations"),
    ]
    for record, needle in bad_cases:
        path = tmp_path / "data.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + json.dumps(record) + "\n" + json.dumps(good) + "\n")
        with pytest.raises(InputError, match=rf"data.jsonl:3: .*{needle}"):
            read_records(path, tmp_path)
    # a JSON list spread over lines: the line where the bad record starts
    listing = tmp_path / "data.json"
    listing.write_text("[\n" + json.dumps(good, indent=1) + ",\n" + json.dumps({"id": "x"}, indent=1) + "\n]")
    line = 2 + json.dumps(good, indent=1).count("\n") + 1
    with pytest.raises(InputError, match=rf"data.json:{line}: "):
        read_records(listing, tmp_path)
    listing.write_text("[\n" + json.dumps(good) + ",\n" + json.dumps(good) + "\n]")
    records = read_records(listing, tmp_path)
    assert [r.where.rsplit(":", 1)[1] for r in records] == ["2", "3"]
    assert records[0].media == tmp_path / "a.mp4" and records[0].kind == "video"
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(InputError, match="broken.jsonl:2: invalid JSON"):
        read_records(tmp_path / "broken.jsonl", tmp_path)


def test_global_batches_do_not_depend_on_the_process_count():
    lengths = list(np.random.default_rng(0).integers(10, 500, 37))
    schedule = GlobalBatches(lengths, global_batch=8, micro_batch=2, seed=3, group_by_length=True)
    assert schedule.steps_per_epoch == 4
    seen = []
    for step in range(9):  # over epoch boundaries
        one = schedule.micro_batches(step, 0, 1)
        two = [schedule.micro_batches(step, r, 2) for r in range(2)]
        assert sorted(sum(one, [])) == sorted(schedule.global_batch_at(step))
        assert one == [mb for pair in zip(*two) for mb in pair]  # the same micro-batches, dealt round-robin
        seen += schedule.global_batch_at(step) if step < 4 else []
    assert len(set(seen)) == 32  # one epoch: no sample twice


def test_batches_mix_images_and_videos_with_right_padding(tiny_checkpoint, tmp_path):
    folder = tmp_path / "toy"
    generate(folder, {"videos": 3, "images": 2, "frames": [5, 9], "size": 64, "fps": 4, "format": "mp4"})
    records = read_records(folder / "records.jsonl", folder)
    ds = TrainDataset(
        records,
        load_tokenizer(tiny_checkpoint),
        DataSpec(frames_upbound=8),
        VisualLayout(image_size=32, frames_per_clip=4),
        max_length=4096,
    )
    samples = [ds.load(i) for i in range(len(ds))]
    assert all(not isinstance(s, str) for s in samples)
    batch = collate(samples, [], pad_id=0, frames_per_clip=4)
    videos = [s for s in samples if s.kind == "video"]
    assert batch.clips.shape[1:] == (4, 3, 32, 32) and batch.images.shape == (2, 1, 3, 32, 32)
    assert int(batch.visual_mask.sum()) == 16 * sum(s.pixels.shape[0] for s in videos) + 64 * 2
    assert [kind for kind, _, _ in batch.order] == [s.kind for s in samples]
    lengths = [len(s.ids) - 1 + s.num_visual for s in samples]
    assert batch.tokens.shape == (5, max(lengths))
    for b, n in enumerate(lengths):  # right padding, never supervised
        assert (batch.labels[b, n:] == IGNORE_INDEX).all() and not batch.visual_mask[b, n:].any()
        assert not (batch.labels[b][batch.visual_mask[b]] != IGNORE_INDEX).any()
    # the dynamic ~1 fps sampler at 4 fps: 5..9 frames -> 4 or 8 frames, whole clips, time message in the prompt
    assert all(s.pixels.shape[0] in (4, 8) for s in videos)


def test_sample_all_keeps_every_frame_of_presampled_videos(tiny_checkpoint, tmp_path):
    frames = np.zeros((7, 32, 32, 3), np.uint8)
    frames[4] = 255  # a needle the official sampler drops: 7 s at 1 fps -> frames 0, 1, 3, 5
    np.save(tmp_path / "v.npy", frames)
    (tmp_path / "r.jsonl").write_text(
        json.dumps(
            {
                "video": "v.npy",
                "fps": 1,
                "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "White."}],
            }
        )
        + "\n"
    )
    records = read_records(tmp_path / "r.jsonl", tmp_path)
    layout = VisualLayout(image_size=32, frames_per_clip=4)
    pixels = {}
    for sample in ("dynamic_fps1", "all"):
        ds = TrainDataset(records, load_tokenizer(tiny_checkpoint), DataSpec(sample=sample), layout, max_length=4096)
        pixels[sample] = ds.load(0).pixels
    assert pixels["dynamic_fps1"].shape[0] == 4 and not (pixels["dynamic_fps1"] > 2).any()  # needle lost
    assert pixels["all"].shape[0] == 8 and int((pixels["all"].flatten(1) > 2).all(1).sum()) == 1  # kept, padded


# ------------------------------------------------------------------------------------------ runs in-process


def test_tiny_example_runs(tmp_path, capfd):
    out = tmp_path / "tiny"
    code = main(["train", str(REPO / "examples/train/tiny.yaml"), "--output", str(out), "--max-steps", "2"])
    _, err = capfd.readouterr()
    assert code == 0, err
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert (out / "loss.png").stat().st_size > 1000
    model = longvid.load(out / "final")
    assert model.config.vision.image_size == 64
    # a finished run refuses to start again in place, and --resume of a finished run is a no-op
    assert main(["train", str(REPO / "examples/train/tiny.yaml"), "--output", str(out)]) == 2
    assert "--resume" in capfd.readouterr().err
    assert (
        main(["train", str(REPO / "examples/train/tiny.yaml"), "--output", str(out), "--max-steps", "2", "--resume"])
        == 0
    )
    assert len(metrics(out)) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nothing to resume: ") and "already finished (2 steps)" in err[0], err


def test_missing_and_corrupt_videos_are_skipped_and_counted(tmp_path, capfd):
    folder = tmp_path / "toy"
    generate(folder, {"videos": 4, "images": 0, "frames": [4, 8], "size": 64, "fps": 4, "format": "npy"})
    lines = (folder / "records.jsonl").read_text().splitlines()
    conv = json.loads(lines[0])["conversations"]
    (folder / "corrupt.mp4").write_bytes(os.urandom(3000))
    lines += [
        json.dumps({"id": "gone", "video": "missing.mp4", "conversations": conv}),
        json.dumps({"id": "bad", "video": "corrupt.mp4", "conversations": conv}),
    ]
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    cfg = write_config(
        tmp_path,
        {
            "data": {
                "synthetic": None,
                "files": [str(folder / "records.jsonl")],
                "root": str(folder),
                "num_workers": 0,
            },
            "optim": {"global_batch_size": 6, "micro_batch_size": 3, "max_steps": 2},
            "output": {"save_every": 0},
        },
    )
    [result] = train(cfg, output=str(tmp_path / "run"))
    err = capfd.readouterr().err
    rows = metrics(tmp_path / "run")
    assert [r["samples"] for r in rows] == [4, 4] and rows[-1]["skipped"] == 4 and result.skipped == 4
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert err.count("warning: skipped") == 4 and "missing.mp4" in err and "(bad)" in err
    assert "4 sample(s) skipped" in err


def test_a_bug_in_our_code_fails_the_run_instead_of_skipping(tmp_path, monkeypatch):
    from longvid.train import data as data_mod

    def broken(self, *args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(data_mod.SquashProcessor, "__call__", broken)
    cfg = write_config(tmp_path, {"optim": {"max_steps": 1}, "output": {"save_every": 0}, "data": {"num_workers": 0}})
    with pytest.raises(ZeroDivisionError):
        train(cfg, output=str(tmp_path / "run"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--nproc", "0"], "--nproc must be at least 1"),
        (["--max-steps", "-1"], "--max-steps must be at least 1"),
        (["--set", "trainable.llm=-0.001"], "trainable.llm must be a learning rate >= 0"),
        (["--set", "optim.warmup_ratio=2"], "warmup_ratio must be between 0 and 1"),
        (["--set", "model.layers=0"], "model.layers must be at least 1"),
    ],
)
def test_negative_or_zero_settings_are_refused(tmp_path, capfd, args, needle):
    cfg = write_config(tmp_path)
    code = main(["train", str(cfg), "--output", str(tmp_path / "run"), *args])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_malformed_record_or_config_fails_before_training(tmp_path, capfd):
    data = tmp_path / "data.jsonl"
    good = {
        "video": "a.npy",
        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}],
    }
    data.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + json.dumps({"video": "b.npy"}) + "\n")
    cfg = write_config(tmp_path, {"data": {"synthetic": None, "files": [str(data)]}})
    for extra in ([], ["--nproc", "2"]):
        code = main(["train", str(cfg), "--output", str(tmp_path / "run"), *extra])
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {data}:3: "), err
    assert not list((tmp_path / "run").glob("init-*"))  # failed before building anything
    for changes, needle in [
        ({"optim": {"lr": 1}}, "unknown setting optim.lr"),
        ({"optim": {"global_batch_size": 7}}, "multiple of optim.micro_batch_size"),
        ({"trainable": {"llm": "fast"}}, "trainable.llm: expected float"),
        ({"trainable": {"decoder": 1e-3}}, "unknown trainable module 'decoder'"),
    ]:
        code = main(["train", str(write_config(tmp_path, changes, "bad.yaml")), "--output", str(tmp_path / "r2")])
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err


def test_multi_stage_config_continues_from_the_previous_stage(tmp_path):
    cfg = write_config(
        tmp_path,
        {
            "stages": [
                {"name": "short", "data": {"frames_upbound": 4}, "trainable": {"vision_tower": None, "llm": None}},
                {"name": "long", "data": {"frames_lowbound": 8, "frames_upbound": 16}, "optim": {"max_steps": 3}},
            ]
        },
    )
    stages = load_config(cfg, output=str(tmp_path / "run"), max_steps=2)
    assert [s.name for s in stages] == ["short", "long"]
    assert stages[0].model.init == TINY_INIT and stages[1].continues
    assert stages[0].lr("vision_tower") is None and stages[1].lr("vision_tower") == 1e-3
    assert [s.optim.max_steps for s in stages] == [2, 2]  # --max-steps wins over the file
    results = train(cfg, output=str(tmp_path / "run"), max_steps=2, sets={"data.num_workers": 0})
    assert [r.global_step for r in results] == [2, 4]
    rows = metrics(tmp_path / "run")
    assert [(r["stage"], r["step"]) for r in rows] == [("short", 1), ("short", 2), ("long", 3), ("long", 4)]
    assert changed_parts(next((tmp_path / "run").glob("init-*")), tmp_path / "run/short/final") == {"mm_projector"}
    assert changed_parts(tmp_path / "run/short/final", tmp_path / "run/long/final") == {
        "vision_tower",
        "mm_projector",
        "llm",
    }
    with pytest.raises(ConfigError, match="give model.path"):
        load_config(write_config(tmp_path, {"model": {"init": None}}, "nomodel.yaml"))


def test_lora_trains_only_adapters_and_merges_to_the_same_logits(tmp_path, capfd):
    cfg = write_config(
        tmp_path,
        {
            "trainable": {"vision_tower": None, "projector": None, "llm": 1e-2},
            "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "down_proj"]},
            "optim": {"max_steps": 3},
            "data": {"num_workers": 0},
            "output": {"save_every": 2},
        },
    )
    [result] = train(cfg, output=str(tmp_path / "run"), keep_module=True)
    model = result.module.model.eval()
    init = read_weights(next((tmp_path / "run").glob("init-*")))
    lora_b = []
    for name, value in model.state_dict().items():
        if is_lora_key(name):
            lora_b += [value] if ".lora_B." in name else []
            continue
        assert torch.equal(value, init[model.to_release_key(base_name(name))]), name
    assert lora_b and all(b.abs().sum() > 0 for b in lora_b)  # B starts at zero: every adapter moved
    final = tmp_path / "run/final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert (
        config["peft_type"] == "LORA"
        and config["r"] == 4
        and sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    )
    assert all(k.startswith("base_model.model.model.layers.") for k in keys(final / "adapter_model.safetensors"))
    assert len(keys(final / "adapter_model.safetensors")) == 2 * 3 * 2  # A, B x 3 targets x 2 layers
    assert keys(final / "non_lora_trainables.safetensors") == set()
    assert (tmp_path / "run/checkpoints/step-00000002/adapter_model.safetensors").is_file()
    # peft itself reads the adapter into a model with the released (HF Qwen2) module names
    from peft import PeftModel
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = json.loads((final / "config.json").read_text())
    hf = Qwen2ForCausalLM(
        Qwen2Config(
            **{
                k: cfg[k]
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                )
            }
        )
    )
    peft_state = PeftModel.from_pretrained(hf, str(final)).state_dict()
    for key, value in safe_load(final / "adapter_model.safetensors").items():
        assert torch.equal(peft_state[key.replace(".weight", ".default.weight")], value)

    assert main(["merge-lora", str(final), "--output", str(tmp_path / "merged")]) == 0
    merged = longvid.load(tmp_path / "merged")
    assert keys(tmp_path / "merged/model.safetensors") == set(init)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = model.llm.logits(model.llm(model.llm.embed(ids)).hidden)
        folded = merged.model.llm.logits(merged.model.llm(merged.model.llm.embed(ids)).hidden)
    diff = (adapted - folded).abs().max().item()
    print(f"LoRA merge: max |logit difference| = {diff:.2e}")
    assert diff < 1e-4


def test_checkpoints_use_the_released_key_names(tmp_path):
    fixture = PARITY / "videochat_flash_tiny" / "checkpoint"
    if not (fixture / "model.safetensors").is_file():
        missing_parity(fixture)
    # built from the fixture's own config.json: every released key, nothing else
    cfg = write_config(
        tmp_path,
        {
            "model": {"init": None, "path": str(fixture)},
            "data": {"frames_upbound": 4, "num_workers": 0},
            "optim": {"global_batch_size": 2, "micro_batch_size": 2, "max_steps": 2},
            "output": {"save_every": 1},
        },
    )
    train(cfg, output=str(tmp_path / "run"))
    expected = keys(fixture / "model.safetensors")
    for folder in (tmp_path / "run/final", tmp_path / "run/checkpoints/step-00000001"):
        assert keys(folder / "model.safetensors") == expected
        assert json.loads((folder / "config.json").read_text()) == json.loads((fixture / "config.json").read_text())
        model = longvid.load(folder)
        answer = model.ask(
            np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8),
            "What moves?",
            max_new_tokens=2,
            num_frames=8,
        )
        assert answer.num_visual_tokens == 128
    trained, original = read_weights(tmp_path / "run/final"), read_weights(fixture)
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in original.items()}
    assert any(not torch.equal(trained[k], original[k]) for k in original)


# ------------------------------------------------------------------------------------------ subprocess runs


def longvid_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "longvid", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(longvid_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def reference_run(small_config, tmp_path_factory) -> Path:
    """The uninterrupted single-process run everything else is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_cli("train", str(small_config), "--output", str(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one_and_learn(strategy, small_config, reference_run, tmp_path):
    out = tmp_path / "run"
    run_cli(
        "train", str(small_config), "--output", str(out), "--nproc", "2", "--set", f"distributed.strategy={strategy}"
    )
    one, two = losses(reference_run), losses(out)
    print(f"{strategy}: 1 process {one}\n{strategy}: 2 processes {two}")
    assert abs(one[0] - two[0]) < 1e-5  # the same global batch from the same weights
    np.testing.assert_allclose(two, one, atol=1e-4)
    assert two[-1] < two[0] - 0.2  # the loss falls on the toy task
    assert [m["samples"] for m in metrics(out)] == [8] * 8
    assert keys(out / "final/model.safetensors") == keys(reference_run / "final/model.safetensors")


@pytest.mark.slow
def test_kill_9_then_resume_reproduces_the_losses(small_config, reference_run, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        longvid_cmd("train", str(small_config), "--output", str(out)),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = out / "checkpoints/step-00000002"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = len(metrics(out))
    assert 2 <= killed_at < 8
    run_cli("train", str(small_config), "--output", str(out), "--resume")
    resumed, reference = losses(out), losses(reference_run)
    print(
        f"killed after step {killed_at}; max |resumed - uninterrupted| = "
        f"{max(abs(a - b) for a, b in zip(resumed, reference)):.1e}"
    )
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))
    np.testing.assert_allclose(resumed, reference, rtol=0, atol=1e-6)
    final, ref = read_weights(out / "final"), read_weights(reference_run / "final")
    assert all(torch.equal(final[k], ref[k]) for k in ref)


@pytest.mark.slow
def test_accelerate_launch_two_processes_match_one(small_config, reference_run, tmp_path):
    """`accelerate launch` (as the train command's help shows) runs the same DDP training as --nproc."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "longvid",
        "train",
        str(small_config),
        "--output",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stderr and [m["samples"] for m in metrics(out)] == [8] * 8
    np.testing.assert_allclose(losses(out), losses(reference_run), atol=1e-4)


@pytest.mark.slow
def test_two_processes_kill_9_then_resume(small_config, reference_run, tmp_path):
    """kill -9 of the launcher and both workers mid-run; --resume on 2 processes ends where one run does."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        longvid_cmd("train", str(small_config), "--output", str(out), "--nproc", "2"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = out / "checkpoints/step-00000002"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: launcher and workers
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = len(metrics(out))
    assert 2 <= killed_at < 8
    run_cli("train", str(small_config), "--output", str(out), "--resume", "--nproc", "2", timeout=600)
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))
    np.testing.assert_allclose(losses(out), losses(reference_run), atol=1e-4)


def test_official_stage_configs_run_on_a_tiny_model(tmp_path):
    """Each ready stage config, pointed at a tiny model and generated data, trains what the recipe says."""
    from longvid.tiny import make_checkpoint, tiny_videochat_flash_config

    init = make_checkpoint(
        tmp_path / "init",
        tiny_videochat_flash_config(512, hidden=32, layers=2, intermediate=64, vision_dim=32, vision_depth=2),
    )
    tiny_data = {
        "data.files": [],
        "data.synthetic": {"videos": 4, "images": 2, "frames": [8, 16], "size": 64},
        "data.num_workers": 0,
        "optim.global_batch_size": 2,
        "optim.micro_batch_size": 1,
        "threads": 1,
    }
    previous = init
    trained = {}
    for name in ("stage1_connector", "stage2_short_video", "stage3_short_long_sft", "stage4_highres"):
        sets = {**tiny_data, "model.path": str(previous)}
        if name == "stage4_highres":
            sets["model.resolution"] = 96  # 448 px on the real model; kept small here
        [result] = train(REPO / "examples/train" / f"{name}.yaml", output=str(tmp_path / name), max_steps=2, sets=sets)
        trained[name] = changed_parts(previous, result.final)
        previous = result.final
    assert trained["stage1_connector"] == {"mm_projector"}
    assert trained["stage2_short_video"] == trained["stage3_short_long_sft"] == {"vision_tower", "mm_projector", "llm"}
    assert trained["stage4_highres"] == {"vision_tower", "mm_projector"}  # the LLM is frozen
    cfg = json.loads((previous / "config.json").read_text())
    assert cfg["parity_vision_tower"]["image_size"] == 96 and cfg["torch_dtype"] == "float32"
    assert longvid.load(previous).config.vision.image_size == 96


@pytest.mark.slow
def test_deepspeed_zero2_matches_one_process(small_config, reference_run, tmp_path):
    out = tmp_path / "run"
    run_cli(
        "train",
        str(small_config),
        "--output",
        str(out),
        "--nproc",
        "2",
        "--set",
        "distributed.strategy=deepspeed",
        "--set",
        "distributed.zero_stage=2",
    )
    np.testing.assert_allclose(losses(out), losses(reference_run), atol=1e-4)


# ------------------------------------------------------------------------------------------ needle task


def test_needle_task_trains_with_its_tokenizer_and_position_skipping(tmp_path):
    """`task: needle` writes videos + text records; `tokenizer: needle` keeps option markers whole;
    `use_pos_skipping` shifts positions in training only."""
    init = {**TINY_INIT, "tokenizer": "needle", "use_pos_skipping": True, "pos_skipping_range": 64}
    cfg = write_config(
        tmp_path,
        {
            "model": {"init": init},
            "optim": {"max_steps": 2, "global_batch_size": 4},
            "data": {"time_message": "chat", "frames_upbound": 8},
        },
    )
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["synthetic"] = {"task": "needle", "samples": 12, "frames": [4, 8], "turns": 2, "open": 0.5, "text": 0.3}
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    train(cfg, output=str(out))
    assert [m["step"] for m in metrics(out)] == [1, 2] and all(np.isfinite(losses(out)))
    records = [json.loads(line) for line in next(out.rglob("records.jsonl")).read_text().splitlines()]
    assert any("video" in r for r in records) and any("video" not in r for r in records)
    tokenizer = load_tokenizer(out / "final")
    assert [tokenizer.convert_ids_to_tokens(i) for i in tokenizer("(A) red", add_special_tokens=False).input_ids][
        0
    ] == "(A)"
    from longvid.train.module import TrainingModule

    module = TrainingModule(longvid.load(out / "final"))
    module.train()
    torch.manual_seed(0)
    skipped = module.skipped_positions(100, "cpu")
    steps = skipped.diff()
    assert skipped[0] <= 64 and set(steps.tolist()) <= set(range(1, 66)) and (steps > 1).sum() <= 1
    module.eval()
    assert module.skipped_positions(100, "cpu") is None


def test_a_stage_mixes_generated_sets(tmp_path):
    """`synthetic: [a, b]` trains on both sets' records as one dataset (each set generated once into its own
    folder): 8 + 8 records fill a batch of 12 that neither fills alone; the cards task does not mix."""
    init = {**TINY_INIT, "tokenizer": "needle"}
    short = {"task": "needle", "samples": 8, "frames": [2, 4], "seed": 1}
    text = {"task": "needle", "samples": 8, "text": 1.0, "seed": 2}
    changes = {"model": {"init": init}, "optim": {"max_steps": 1, "global_batch_size": 12, "micro_batch_size": 4}}
    cfg = write_config(tmp_path, {**changes, "data": {"time_message": "chat", "synthetic": [short, text]}})
    out = tmp_path / "run"
    train(cfg, output=str(out))
    assert [m["step"] for m in metrics(out)] == [1] and np.isfinite(losses(out)[0])
    sets = sorted(len(p.read_text().splitlines()) for p in (out / "data").glob("synthetic-*/records.jsonl"))
    assert sets == [8, 8]
    lonely = write_config(tmp_path, {**changes, "data": {"time_message": "chat", "synthetic": [short]}}, "one.yaml")
    with pytest.raises(InputError, match="fewer than global_batch_size 12"):
        train(lonely, output=str(tmp_path / "one"))
    cards = write_config(tmp_path, {**changes, "data": {"synthetic": [{"task": "cards"}, text]}}, "cards.yaml")
    with pytest.raises(ConfigError, match="cannot be mixed"):
        train(cards, output=str(tmp_path / "cards"))


def test_chat_time_message_is_the_inference_string():
    msg = time_message(8.0, 8)
    words = "The video lasts for 8.00 seconds, and 8 frames are uniformly sampled from it."
    assert with_image_first("<image>\nWhat?", msg) == f"<image>\n{words} \nWhat?"  # the official training string
    assert with_image_first("<image>\nWhat?", msg, chat=True) == f"<image>\n{words} What?"  # as `longvid ask` asks


def test_needle_recipe_is_a_valid_short_to_long_curriculum():
    stages = load_config(REPO / "examples/train/needle.yaml")
    assert [s.name for s in stages] == ["see", "letters", "read", "short", "hops", "long", "long2"]
    see, stages = stages[0], stages[1:]
    assert see.model.init["tokenizer"] == "needle" and see.data.synthetic["task"] == "cards"
    assert see.lr("vision_tower") and not see.lr("llm")  # vision pre-training, then the tower stays frozen
    assert all(not s.lr("vision_tower") and s.lr("llm") for s in stages)
    letters, stages = stages[0], stages[1:]  # text only: the LLM learns to answer by letter first
    assert letters.data.synthetic["text"] == 1.0 and not letters.lr("projector") and letters.data.synthetic["lookup"]
    sets = {s.name: synthetic_specs(s.data.synthetic) for s in stages}
    # words only on neutral cards, so training never teaches which shape x colour pairs exist
    assert all(d["open"] == 0 and d["neutral"] > 0 for s in stages for d in sets[s.name])
    assert stages[0].data.labels == "answers"
    assert all(s.data.time_message == "chat" for s in stages)
    bounds = [sets[s.name][0]["frames"] for s in stages]  # long2: its first set, the long videos
    assert bounds[0] == [0, 8] and bounds[-1][1] <= 512 == stages[-1].data.frames_upbound  # the paper's bound
    assert bounds[-1] == bounds[-2] and bounds[-1][1] == max(b[1] for b in bounds) > 10 * bounds[-3][1]  # then long
    assert stages[-1].lr("llm") < stages[-2].lr("llm")  # long2: more of the long videos at a lower rate
    hops = [s for s in stages if s.name == "hops"][0].data.synthetic  # chains, with their hops asked one by one
    assert hops["pointer"] > 0 and sum(k > 1 for k in hops["hops"]) > len(hops["hops"]) / 2
    assert stages[-2].model.set == {"use_pos_skipping": True} and not stages[-1].model.set  # kept in long2


def test_model_layers_deepens_the_llm_without_changing_its_output():
    tiny = Path(longvid.__file__).parent / "assets/tiny_model"
    base, grown = load_for_training(tiny), load_for_training(tiny, layers=6)
    assert grown.config["num_hidden_layers"] == 6 and len(grown.model.llm.model.layers) == 6
    assert base.config["llm_compress_layer_list"] == [2] and grown.config["llm_compress_layer_list"] == [2]
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = (m.model.llm.logits(m.model.llm(m.model.llm.embed(ids)).hidden) for m in (base, grown))
    assert torch.allclose(before, after, atol=1e-5) and before.abs().max() > 1
    state = grown.model.state_dict()
    # the new layers (3 and 5) copy layers 2 and 3 and start with zero output projections
    assert torch.equal(
        state["llm.model.layers.3.self_attn.q_proj.weight"], state["llm.model.layers.2.self_attn.q_proj.weight"]
    )
    assert state["llm.model.layers.5.mlp.down_proj.weight"].abs().sum() == 0
    assert state["llm.model.layers.4.mlp.down_proj.weight"].abs().sum() > 0
    assert load_for_training(tiny, layers=8).config["llm_compress_layer_list"] == [4]  # still before old layer 2
    with pytest.raises(ConfigError, match="an LLM of 4 layers can grow to 4..8 layers"):
        load_for_training(tiny, layers=9)
