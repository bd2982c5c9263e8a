"""NIAH harness plumbing (random tiny model): grid, resume, official placement, scoring, heatmap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longvid.cli import main
from longvid.data.needles import (
    BORDER,
    CARD,
    COLOURS,
    LOOKALIKES,
    SHAPES,
    Needle,
    article,
    combos,
    haystack,
    lookup_question,
    multi_hop_chain,
    needle_card,
    neutral_sample,
    pointer_question,
    pretraining_colour,
    single_hop_question,
    text_sample,
    training_sample,
)
from longvid.niah import NiahSettings, multi_hop_positions, run_niah, single_hop_position
from longvid.niah.harness import letter_of, make_trial


def test_official_placement_formulas():
    # single-hop: haystack[:int(d*F)] + needle + haystack[int(d*F):]
    assert [single_hop_position(1000, d) for d in (0, 0.2, 0.5, 1.0)] == [0, 200, 500, 1000]
    assert single_hop_position(333, 0.7) == int(0.7 * 333)
    # multi-hop, K needles: needle 0 first, needle i after haystack[int((i-1)F/(K-1)) : int(iF/(K-1))]
    assert multi_hop_positions(1000, 5) == [0, 250, 500, 750, 1000]
    assert multi_hop_positions(100, 3) == [0, 50, 100]
    assert multi_hop_positions(10, 4) == [0, int(10 / 3), int(20 / 3), 10]


def test_synthetic_family_is_deterministic_and_splits_needles():
    a = list(haystack(30, 32, seed=3))
    b = list(haystack(30, 32, seed=3))
    assert (
        len(a) == len(b) == 30
        and all(np.array_equal(x, y) for x, y in zip(a, b))
        and not np.array_equal(a[0], list(haystack(1, 32, 4))[0])
    )
    assert len(combos("train")) + len(combos("test")) == len(SHAPES) * len(COLOURS)
    assert not set(combos("train")) & set(combos("test"))
    card = needle_card(Needle("star", "red"), 64)
    assert card.shape == (64, 64, 3) and (card == COLOURS["red"]).all(-1).sum() > 200
    video, questions = training_sample(20, np.random.default_rng(0), 32, distractors=2)
    assert 21 <= len(video) <= 20 + 4 * 3 and len(questions) == 1
    q = single_hop_question(Needle("star", "red"), np.random.default_rng(1))
    assert q.question.startswith("Find the frame of") and q.question.endswith("Best option: (")
    assert f"({q.answer}) " in q.question


def test_multi_hop_chain_points_to_the_next_card():
    chain = multi_hop_chain(4, np.random.default_rng(2))
    assert [c.pointer for c in chain.cards[:-1]] == [c.shape for c in chain.cards[1:]]
    assert chain.cards[-1].pointer is None and len(chain.questions) == 2
    assert chain.questions[0].question.startswith(
        f"Find the frame of a{'n' if chain.cards[0].shape[0] in 'aeiou' else ''} "
        f"{chain.cards[0].shape}. Locate the final frame"
    )


def test_chain_samples_ask_both_questions_first_and_read_icons():
    firsts, icons = set(), 0
    for seed in range(12):
        _, questions = training_sample(6, np.random.default_rng(seed), 32, hops=3, distractors=1, pointer=0.5)
        firsts.add(questions[0].kind)
        assert [q.kind for q in questions[:2]] in (["caption", "color"], ["color", "caption"])
        if len(questions) == 3:
            icons += 1
            q = questions[2]
            assert q.kind == "pointer-word" and q.question.endswith("What shape is the icon on it?")
            assert q.answer.removeprefix("It is ").removeprefix("an ").removeprefix("a ").rstrip(".") in SHAPES
    assert firsts == {"caption", "color"} and 2 <= icons <= 10
    card = multi_hop_chain(3, np.random.default_rng(0)).cards[0]
    q = pointer_question(card)
    assert (
        q.question.startswith(f"Find the frame of {article(card.shape)}.")
        and q.answer == f"It is {article(card.pointer)}."
    )


def _options_of(question: str) -> list[str]:
    return [line.split(") ", 1)[1] for line in question.split("Options: ")[1].split("\nOnly")[0].split("\n")]


def test_training_options_carry_no_pair_prior():
    """Training questions offer only values that occur with the located attribute in training, so "the star
    is never cyan" is worth nothing to learn; evaluation questions draw from every value."""
    train = set(combos("train"))
    rng = np.random.default_rng(0)
    seen_eval = set()
    for _ in range(200):
        shape, colour = combos("train")[int(rng.integers(0, len(train)))]
        q = single_hop_question(Needle(shape, colour), rng, "train")
        options = _options_of(q.question)
        located = [(shape, o) for o in options] if q.kind == "color" else [(o, colour) for o in options]
        assert set(located) <= train and options[ord(q.answer) - 65] == (colour if q.kind == "color" else shape)
        e = single_hop_question(Needle(shape, colour), rng)  # the official, unrestricted options
        seen_eval |= {(shape, o) for o in _options_of(e.question)} if e.kind == "color" else set()
    assert seen_eval - train  # evaluation does offer pairs training never shows
    chain = multi_hop_chain(3, rng, "train")
    assert all(
        tuple(reversed(o.split(" ", 1)[1].split(" "))) in train for o in _options_of(chain.questions[0].question)
    )
    # the lookup question (training only) gives the answer and asks its letter
    q = lookup_question(Needle("star", "red"), np.random.default_rng(3), "train")
    value = q.question.split("The answer is ")[1].split(".")[0]
    assert value in ("star", "red") and _options_of(q.question)[ord(q.answer) - 65] == value
    # text samples describe training pairs only
    for _ in range(100):
        context, _ = text_sample(rng, "train", others=2)
        described = [c.split(" ", 1)[1].split(" ") for c in context[len("The video shows ") : -1].split(", then ")]
        assert all((s, c) in train for c, s in described)


def test_neutral_cards_show_one_attribute_alone():
    """Words are asked only about cards that show one attribute alone: a shape in an unnamed colour, or a
    blob (none of the eight shapes) in a named colour, and the question names neither."""
    rng = np.random.default_rng(4)
    named = np.array(list(COLOURS.values()))
    kinds = set()
    for _ in range(40):
        card, q = neutral_sample(rng, 64)
        kinds.add(q.kind)
        assert "Find the frame of a card." in q.question and not any(w in q.question for w in (*COLOURS, *SHAPES))
        paint = card[~(card == CARD).all(-1) & ~(card == BORDER).all(-1)]
        if q.kind == "shape-word":  # an unnamed colour, far from all eight
            assert q.answer.split()[-1].rstrip(".") in SHAPES
            assert np.linalg.norm(named - paint[0].astype(int), axis=1).min() > 40
        else:  # a named colour on a blob
            assert q.answer == f"It is {[c for c in COLOURS if tuple(paint[0]) == COLOURS[c]][0]}."
    assert kinds == {"shape-word", "color-word"}
    assert np.linalg.norm(named - np.array(pretraining_colour(rng)), axis=1).min() > 48
    # jitter moves the named colour a little, never to another name
    card = needle_card(Needle("square", "orange"), 64, seed=1, jitter=24)
    painted = card[32, 32].astype(int)
    assert 0 < np.abs(painted - np.array(COLOURS["orange"])).max() <= 24
    video, questions = training_sample(12, np.random.default_rng(0), 32, neutral=1.0)
    assert len(questions) == 1 and questions[0].question.startswith("Find the frame of a card.")
    # by letter: every shape (colour) can be a wrong option, and the words are what the card shows
    offered, kinds = set(), set()
    for _ in range(60):
        card, q = neutral_sample(rng, 64, letters=0.5)
        kinds.add(q.kind)
        if q.kind in ("shape", "color"):
            options = _options_of(q.question)
            offered |= set(options)
            paint = card[~(card == CARD).all(-1) & ~(card == BORDER).all(-1)]
            truth = options[ord(q.answer) - 65]
            if q.kind == "color":
                assert tuple(paint[0]) == COLOURS[truth]
            else:
                assert truth in SHAPES and np.linalg.norm(named - paint[0].astype(int), axis=1).min() > 40
    assert kinds == {"shape", "color", "shape-word", "color-word"} and offered == set(SHAPES) | set(COLOURS)
    # look-alikes: a circle asked by letter is always offered with a ring
    shapes = 0
    for _ in range(40):
        card, q = neutral_sample(rng, 64, letters=1.0, lookalike=1.0)
        if q.kind == "shape":
            shapes += 1
            options = _options_of(q.question)
            assert LOOKALIKES[options[ord(q.answer) - 65]] in options and len(set(options)) == 4
    assert shapes > 10 and all(LOOKALIKES[LOOKALIKES[s]] == s for s in SHAPES)


def test_letter_match():
    assert letter_of("B) blue") == "B" and letter_of(" (c)") == "C" and letter_of("") == ""


def test_grid_resume_and_outputs(tiny_model, tmp_path):
    settings = NiahSettings(frames=[12, 20], depths=[0.0, 1.0], trials=1, seed=5, size=32)
    summary = run_niah(tiny_model, settings, tmp_path, progress=False)
    assert summary["trials"] == 4 and {c["frames"] for c in summary["cells"]} == {12, 20}
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["accuracy"] == summary["accuracy"] and on_disk["settings"]["seed"] == 5
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # interrupt: drop the last finished trial (and cut a line mid-write); the rerun redoes only that one
    (tmp_path / "trials.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    calls = []
    import longvid.niah.harness as harness

    original = harness.run_trial
    harness.run_trial = lambda *a: (calls.append(a[3].key), original(*a))[1]
    try:
        again = run_niah(tiny_model, settings, tmp_path, progress=False)
    finally:
        harness.run_trial = original
    assert calls == [json.loads(lines[3])["key"]] and again["trials"] == 4
    # the redone trial is its own line, not glued onto the cut one
    redone = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert [r["key"] for r in redone] == [json.loads(line)["key"] for line in lines]
    with pytest.raises(Exception, match="other settings"):
        run_niah(tiny_model, NiahSettings(frames=[12], depths=[0.0], trials=1, seed=6, size=32), tmp_path)


def test_pixel_level_puts_the_needle_at_its_depth(tiny_model):
    s = NiahSettings(frames=[40], depths=[0.5], trials=1, seed=1, size=32, needle_frames=2)
    trial = make_trial(s, 40, 0.5, 0)
    from longvid.niah.harness import Haystack

    video = Haystack(s).spliced(40, trial.images, trial.positions, s.needle_frames)
    frames = video.read(list(range(video.num_frames)))
    assert video.num_frames == 42
    assert np.array_equal(frames[20], trial.images[0]) and np.array_equal(frames[21], trial.images[0])
    assert not np.array_equal(frames[19], trial.images[0]) and not np.array_equal(frames[22], trial.images[0])


def test_cli_multi_hop_embedding_level(tiny_checkpoint, tmp_path, capfd):
    code = main(
        [
            "niah",
            "--model",
            str(tiny_checkpoint),
            "--frames",
            "16",
            "--hops",
            "3",
            "--level",
            "embedding",
            "--trials",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    out, err = capfd.readouterr()
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["settings"]["hops"] == 3 and "accuracy" in summary
    record = json.loads((tmp_path / "trials.jsonl").read_text().splitlines()[0])
    assert len(record["questions"]) == 2 and record["positions"] == [0, 8, 16]
    assert record["visual_tokens"] == 16 * 16 + 3 * 64  # haystack + three needle clips of 64 tokens
    assert (tmp_path / "haystack_features.safetensors").is_file()


def test_demo_video_hides_an_unseen_needle_and_reports_both_answers(tmp_path, capsys):
    from longvid.data.needles import CARD
    from longvid.demo import FPS, run
    from longvid.video import open_video

    result = run(tmp_path, minutes=1.0, seed=3)
    printed = capsys.readouterr().out
    assert "truth" in printed and "timings" in printed and "in words" in printed
    # the official plan: ~1 fps, at least 64 frames
    assert result["truth"] in "ABCD" and result["frames"] == 64 and result["words_truth"].startswith("It is ")
    video = open_video(tmp_path / "needle_1min.mp4")
    assert video.num_frames == 60 * FPS
    card = video.read([result["at"] * FPS + 5])[0]  # the card is on screen for 3 s from `at`
    before = video.read([(result["at"] - 1) * FPS])[0]
    assert np.abs(card[4:8, 20:44].astype(int) - CARD).max() < 30  # light card background below the border
    assert np.abs(before[4:8, 20:44].astype(int) - CARD).max() >= 30
    video.close()
    assert (result["shape"], result["colour"]) in combos("test")  # a pair held out of training


def test_trial_log_repairs_a_cut_tail(tmp_path):
    from longvid.niah.records import RecordWriter, read_records

    path = tmp_path / "t.jsonl"
    with RecordWriter(path) as log:
        log.append({"key": "a"})
        log.append({"key": "b"})
    path.write_bytes(path.read_bytes() + b'{"key": "c", "acc')  # killed mid-write
    assert [r["key"] for r in read_records(path)] == ["a", "b"]
    assert path.read_bytes().endswith(b"}\n")  # the cut tail is gone from the file
    path.write_bytes(path.read_bytes() + b'{"key": "c"')
    with RecordWriter(path) as log:
        log.append({"key": "c"})
    assert [r["key"] for r in read_records(path)] == ["a", "b", "c"]
