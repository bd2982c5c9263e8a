"""The `cards` task: vision pre-training of the tower (train/attributes.py) before the LLM stages."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from longvid.compress.tome import replay, tome_merge
from longvid.data.needles import (
    BORDER,
    CARD,
    COLOURS,
    SHAPES,
    attribute_clip,
    haystack,
    near_colour,
    neutral_sample,
    pretraining_colour,
)
from longvid.train import train
from test_train import TINY_INIT


def test_pretraining_colours_stay_away_from_every_named_colour():
    rng = np.random.default_rng(0)
    colours = np.array([pretraining_colour(rng, 48.0) for _ in range(500)])
    for rgb in COLOURS.values():
        assert np.linalg.norm(colours - np.array(rgb), axis=1).min() > 48
    assert colours.std(0).min() > 40  # spread over RGB


def test_near_colours_sit_just_outside_the_named_ones():
    rng = np.random.default_rng(0)
    colours = np.array([near_colour(rng) for _ in range(400)])
    named = np.array(list(COLOURS.values()))
    distance = np.linalg.norm(colours[:, None] - named[None], axis=2)
    assert distance.min() > 48 and distance.min(1).max() <= 72.5  # as far as pretraining colours, but next to one
    assert len(set(distance.argmin(1).tolist())) == len(COLOURS)  # around every named colour
    # the `near` data option paints the unnamed-colour shapes of neutral cards with them
    shapes = 0
    for _ in range(30):
        card, question = neutral_sample(rng, 64, near=1.0)
        if question.kind == "shape-word":
            shapes += 1
            paint = card[~(card == CARD).all(-1) & ~(card == BORDER).all(-1)][0].astype(float)
            assert 48 < np.linalg.norm(named - paint, axis=1).min() <= 72.5
    assert shapes > 5


def test_attribute_clip_labels_match_the_frames():
    rng = np.random.default_rng(1)
    hay = np.stack(list(haystack(16, 64, 3)))
    frames, labels = attribute_clip(64, rng, hay, card_ratio=0.5, pointer_ratio=0.5)
    assert frames.shape == (64, 64, 64, 3) and labels.shape == (64, 6)
    cards = labels[:, 0] == 1
    assert 10 < cards.sum() < 54
    assert (labels[~cards, 1:] == -100).all() and (labels[cards, 1] >= 0).all() and (labels[cards, 2] >= 0).all()
    assert set(labels[cards, 2]) <= set(range(len(SHAPES) + 1)) and (labels[cards, 2] == len(SHAPES)).any()
    for frame, label in zip(frames[cards], labels[cards]):  # the regressed colour is the shape's paint
        assert (frame == label[3:].astype(np.uint8)).all(-1).sum() > 100
    # a card is light with a dark border; a haystack frame is a muted texture
    assert frames[cards][:, 0, 0].mean() < 60 and frames[cards][:, 32, 8].mean() > 200
    assert all(any((frames[~cards][i] == h).all() for h in hay) for i in range(int((~cards).sum())))


def test_replay_counts_each_merged_tokens_patches_per_frame():
    torch.manual_seed(0)
    x = torch.randn(2, 4 * 16, 8)
    decisions: list = []
    merged = tome_merge(x, 16, 2, decisions)
    onehot = torch.nn.functional.one_hot(torch.arange(4).repeat_interleave(16), 4).float().expand(2, -1, -1)
    counts = replay(decisions, onehot)
    assert merged.shape == (2, 16, 8) and counts.shape == (2, 16, 4)
    assert torch.equal(counts.sum((1, 2)), torch.tensor([64.0, 64.0]))  # every patch lands in one token
    assert (counts.sum(-1) >= 1).all()


def test_cards_stage_trains_the_tower_and_saves_released_keys_only(tmp_path):
    cfg = {
        "name": "see",
        "seed": 0,
        "threads": 1,
        "model": {"init": TINY_INIT},
        "trainable": {"vision_tower": 1e-3, "projector": 1e-3},
        "data": {"synthetic": {"task": "cards", "haystack_frames": 32}},
        "optim": {
            "global_batch_size": 4,
            "micro_batch_size": 2,
            "max_steps": 3,
            "warmup_steps": 0,
            "schedule": "constant",
        },
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "see.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = train(path)
    assert result[0].steps == 3 and len(result[0].losses) == 3 and all(np.isfinite(result[0].losses))
    init = next((tmp_path / "run").glob("init-*"))
    before, after = load_file(str(init / "model.safetensors")), load_file(str(tmp_path / "run/final/model.safetensors"))
    assert set(before) == set(after)  # the probe heads are not saved
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.vision_tower.") for k in changed)
    assert any(k.startswith("model.mm_projector.") for k in changed)
    assert not any(k.startswith("model.layers.") or k.startswith("lm_head") for k in changed)  # LLM frozen
