"""`longvid eval`: answer extraction and scoring against hand-worked cases (quirks of the official code
included), every benchmark end to end on a tiny dataset in its official layout with the bundled model,
--score-only, resume after kill -9, and 2-process sharding equal to 1 process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longvid.cli import main
from longvid.eval import Question, benchmark
from longvid.eval.charades import iou, parse_segment
from longvid.eval.choice import mcq_letter, mmmu_letter, videomme_letter
from longvid.eval.summary import summarize

# ------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    "text, letter",
    [
        ("(B) ran", "B"),
        ("B. ran", "B"),
        ("Best option: (C)", "C"),
        ("the answer is a dog", "A"),  # the official rule takes any standalone letter, the article too
        ("D", "D"),
        ("It is purple.", "it is purple"),  # no letter: the normalised text (never equal to a letter)
        ("", ""),
    ],
)
def test_mcq_letter(text, letter):
    assert mcq_letter(text) == letter


@pytest.mark.parametrize(
    "text, letter",
    [
        ("The best answer is B.", "B"),
        ("I think (C) is right", "C"),
        ("Because the man ran, D", "B"),  # the first capital A-D anywhere wins, as in extract_characters_regex
        ("the man is running along the road in a park on a sunny day with a dog", ""),  # > 10 words, no A-D
        ("none", ""),
    ],
)
def test_videomme_letter(text, letter):
    assert videomme_letter(text) == letter


def test_mmmu_letter():
    options = ["sitting", "running", "eating"]
    assert mmmu_letter("(B)", options) == "B"
    assert mmmu_letter("The answer is C.", options) == "C"
    assert mmmu_letter("A and B", options) == "B"  # several letters: the one named last
    assert mmmu_letter("I believe the person in the video is running", options) == "B"  # the option's text
    guess = mmmu_letter("zzz", options, seed="q1")  # nothing found: a guess, reproducible per question
    assert guess in "ABC" and all(mmmu_letter("zzz", options, seed="q1") == guess for _ in range(3))


@pytest.mark.parametrize(
    "text, segment",
    [
        ("The event happens in 24.3 - 30.4 seconds.", [24.3, 30.4]),
        ("It happens from 5 to 10 seconds", [5.0, 10.0]),  # "to" -> "-"
        ("The event happens in 30 - 20 seconds", [20.0, 30.0]),  # reversed: sorted
        ("Starting time: 0.8 seconds\nEnding time: 1.1 seconds", [0.8, 1.1]),
        ("The event starts at 00:00:18 and ends at 00:00:23.", None),  # one sentence, one time each: no pair
        ("I cannot tell.", None),
    ],
)
def test_parse_segment(text, segment):
    assert parse_segment(text) == segment


def test_charades_summary_hand_worked():
    assert iou([0, 10], [5, 15]) == pytest.approx(1 / 3)
    bench = benchmark("charades-sta")
    rows = [
        {"id": str(i), "task": "charades", "score": s, "groups": {}, "extracted": [0, 1]}
        for i, s in enumerate([0.8, 0.55, 0.35, 0.0])
    ]
    summary = summarize(bench, rows, 4, {})
    assert summary["overall"] == pytest.approx((0.8 + 0.55 + 0.35) / 4)
    assert summary["R@1,IoU=0.3"] == 0.75 and summary["R@1,IoU=0.5"] == 0.5 and summary["R@1,IoU=0.7"] == 0.25


# ------------------------------------------------------------------------------------------ tiny datasets


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from longvid.data.synthetic import moving_shapes, write_video

    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_shapes(20, 48, 64), fps=10)


def put(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        shutil.copy(content, path)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return path


def make_mvbench(root: Path, clip: Path) -> Path:
    put(root / "video/star/Charades_v1_480/A1.mp4", clip)
    put(root / "video/clevrer/video_validation/c1.mp4", clip)
    put(
        root / "json/action_sequence.json",
        [
            {
                "video": "A1.mp4",
                "question": "What did the person do?",
                "candidates": ["sat", "ran", "ate"],
                "answer": "ran",
                "start": 0.2,
                "end": 1.8,
            },
            {"video": "gone.mp4", "question": "Q2?", "candidates": ["x", "y"], "answer": "x"},
        ],
    )
    put(
        root / "json/object_existence.json",
        [{"video": "c1.mp4", "question": "Does a cube exist?", "candidates": ["yes", "no"], "answer": "no"}],
    )
    return root


def make_videomme(root: Path, clip: Path) -> Path:
    put(root / "data/v1.mp4", clip)
    put(
        root / "subtitle/v1.srt",
        '1\n00:00:00,000 --> 00:00:01,000\n<font color="white" size=".72c">hello there</font>\n',
    )
    docs = [
        {
            "video_id": "001",
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Humanity",
            "url": "u",
            "videoID": "v1",
            "question_id": f"001-{k}",
            "task_type": t,
            "question": f"Q{k}?",
            "options": ["A. one", "B. two", "C. three", "D. four"],
            "answer": a,
        }
        for k, t, a in [(1, "Counting Problem", "B"), (2, "Object Recognition", "D")]
    ]
    docs.append({**docs[0], "videoID": "v2", "question_id": "002-1", "duration": "long"})  # no such video
    put(root / "videomme/test.json", docs)
    return root


def make_mlvu(root: Path, clip: Path) -> Path:
    put(root / "video/1_plotQA/m1.mp4", clip)
    put(root / "video/4_count/m2.mp4", clip)
    put(
        root / "json/1_plotQA.json",
        [
            {
                "video": "m1.mp4",
                "duration": 2,
                "question": "What color?",
                "candidates": ["Yellow", "Red"],
                "answer": "Red",
                "question_type": "plotQA",
            }
        ],
    )
    put(
        root / "json/4_count.json",
        [
            {
                "video": "m2.mp4",
                "duration": 2,
                "question": "How many?",
                "candidates": ["1", "2", "3"],
                "answer": "3",
                "question_type": "count",
            }
        ],
    )
    return root


def make_longvideobench(root: Path, clip: Path) -> Path:
    put(root / "videos/lv1.mp4", clip)
    put(
        root / "subtitles/lv1_en.json",
        [
            {"start": "00:00:00.000", "end": "00:00:01.500", "line": "look here"},
            {"timestamp": [5.0, 6.0], "text": "too late"},
        ],
    )
    put(
        root / "lvb_val.json",
        [
            {
                "id": "lvq1",
                "video_id": "lv1",
                "video_path": "lv1.mp4",
                "subtitle_path": "lv1.json",
                "duration": 2.0,
                "duration_group": 15,
                "question_category": "S2E",
                "starting_timestamp_for_subtitles": 0,
                "question": "What happens?",
                "candidates": ["a cat", "a dog"],
                "correct_choice": 1,
            },
            {
                "id": "lvq2",
                "video_id": "lv1",
                "video_path": "lv1.mp4",
                "subtitle_path": "",
                "duration": 2.0,
                "duration_group": 15,
                "question_category": "E2O",
                "starting_timestamp_for_subtitles": 0,
                "question": "Which?",
                "candidates": ["x", "y", "z"],
                "correct_choice": 0,
            },
        ],
    )
    return root


def make_lvbench(root: Path, clip: Path) -> Path:
    put(root / "videos/00000001.mp4", clip)
    line = {
        "key": "00000001",
        "type": "sport",
        "qa": [
            {
                "uid": "u1",
                "question": "Who scores?\n(A) red\n(B) blue\n(C) none\n(D) both",
                "answer": "B",
                "question_type": ["key information retrieval", "event understanding"],
            },
            {
                "uid": "u2",
                "question": "When?\n(A) 1\n(B) 2\n(C) 3\n(D) 4",
                "answer": "A",
                "question_type": ["temporal grounding"],
            },
        ],
    }
    put(root / "video_info.meta.jsonl", json.dumps(line) + "\n")
    return root


def make_charades(root: Path, clip: Path) -> Path:
    put(root / "Charades_v1_480/AB12C.mp4", clip)
    put(root / "charades_sta_test.txt", "AB12C 0.0 1.2##a person opens a door.\nAB12C 0.5 2.0##a person sits down.\n")
    return root


MAKERS = {
    "mvbench": make_mvbench,
    "videomme": make_videomme,
    "videomme-sub": make_videomme,
    "mlvu": make_mlvu,
    "longvideobench": make_longvideobench,
    "lvbench": make_lvbench,
    "charades-sta": make_charades,
}
IDS = {
    "mvbench": ["action_sequence/0", "action_sequence/1", "object_existence/0"],
    "videomme": ["001-1", "001-2", "002-1"],
    "videomme-sub": ["001-1", "001-2", "002-1"],
    "mlvu": ["1_plotQA/0", "4_count/0"],
    "longvideobench": ["lvq1", "lvq2"],
    "lvbench": ["u1", "u2"],
    "charades-sta": ["0", "1"],
}
MISSING = {"mvbench": 1, "videomme": 1, "videomme-sub": 1}


def test_official_prompts(tmp_path, clip):
    """The exact text given to the model, hand-built from the official doc_to_text functions."""
    q = benchmark("mvbench").load(make_mvbench(tmp_path / "mv", clip))[0]
    assert (
        q.prompt
        == "Question: What did the person do?\nOption:\n(A) sat\n(B) ran\n(C) ate\n\nOnly give the best option."
    )
    assert (q.answer, q.start, q.end) == ("B", 0.2, 1.8)
    q = benchmark("mlvu").load(make_mlvu(tmp_path / "ml", clip))[0]
    assert q.prompt == (
        "Question:What color?\nOption:\n(A) Yellow\n(B) Red\n"
        "Answer with the option's letter from the given choices directly."
    )
    vm = make_videomme(tmp_path / "vm", clip)
    q = benchmark("videomme").load(vm)[0]
    assert q.prompt == (
        "These are the frames of a video. Select the best answer to the following multiple-choice "
        "question based on the video. Respond with only the letter (A, B, C, or D) of the correct "
        "option.\nQuestion: Q1?\nOption:\nA. one\nB. two\nC. three\nD. four\nAnswer with the "
        "option's letter from the given choices directly."
    )
    q = benchmark("videomme-sub").load(vm)[0]
    assert q.prompt.startswith(
        "This video's subtitles are listed below: \nhello there\nThese are the frames and subtitles of a video."
    )
    assert q.prompt.endswith("D. four\nThe best answer is:")
    lvb = benchmark("longvideobench").load(make_longvideobench(tmp_path / "lvb", clip))
    assert lvb[0].prompt == (
        " This video's subtitles are listed below: \nlook here.\n Select the best answer to the "
        "following multiple-choice question based on the video and the subtitles. Respond with "
        "only the letter of the correct option.\nQuestion: What happens?\n(A). a cat\n(B). a dog\n"
        "Answer with the option's letter from the given choices directly.\n"
    )
    assert (
        lvb[1].prompt
        == "Which?\n(A). x\n(B). y\n(C). z\nAnswer with the option's letter from the given choices directly.\n"
    )
    assert [q.answer for q in lvb] == ["B", "A"]
    q = benchmark("lvbench").load(make_lvbench(tmp_path / "lv", clip))[0]
    assert q.prompt == (
        "Who scores?\n(A) red\n(B) blue\n(C) none\n(D) both\n"
        "Answer with the option's letter from the given choices directly."
    )
    q = benchmark("charades-sta").load(make_charades(tmp_path / "ch", clip))[0]
    assert q.prompt.endswith(
        "Now I will give you the textual sentence: a person opens a door. Please return its start time and end time."
    )
    assert q.answer == [0.0, 1.2]


def test_video_xl_prompts(tmp_path, clip):
    """Video-XL's own prompts (upstream lmms-eval v0.2.3's task utils, which Video-XL/eval/videoxl.py ran),
    hand-built; benchmarks Video-XL did not evaluate with lmms-eval keep VideoChat-Flash's."""
    vm = make_videomme(tmp_path / "vm", clip)
    q = benchmark("videomme", "video_xl").load(vm)[0]
    assert q.prompt == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\nQ1?\n"
        "['A. one', 'B. two', 'C. three', 'D. four']\n"
        "\nAnswer with the option's letter from the given choices directly."
    )
    assert benchmark("videomme-sub", "video_xl").style == "videochat_flash"  # its subtitle variant: not reproduced
    ml = benchmark("mlvu", "video_xl")
    q = ml.load(make_mlvu(tmp_path / "ml", clip))[0]
    assert q.prompt == "\nWhat color?\n(A) Yellow\n(B) Red\nOnly give the best option.\n\nBest option: ("
    assert q.answer == "B"
    # the character before the first ")", else the whole stripped output; compared with the letter as is
    for output, extracted in [("B) Red", "B"), (" A) Yellow", "A"), ("Red (B)", "B"), (")", ""), ("b", "b"), ("", "")]:
        assert ml.extract(output, q) == extracted
    assert [ml.score(ml.extract(o, q), q) for o in ("B) Red", "b", "The answer is B")] == [1.0, 0.0, 0.0]
    lvb = benchmark("longvideobench", "video_xl").load(make_longvideobench(tmp_path / "lvb", clip))
    assert (
        lvb[0].prompt
        == "What happens?\nA. a cat\nB. a dog\nAnswer with the option's letter from the given choices directly.\n"
    )
    for bench in ("mvbench", "lvbench", "charades-sta"):
        assert benchmark(bench, "video_xl").style == "videochat_flash"


def test_prompt_style_follows_the_model_family(tmp_path, clip):
    """--prompts auto takes the family's own prompts: a tiny Video-XL checkpoint gets Video-XL's."""
    from longvid.tiny import make_tiny_video_xl

    ckpt = make_tiny_video_xl(
        tmp_path / "vxl",
        seed=1,
        hidden=32,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=64,
        image_size=28,
        patch=14,
        vision_dim=16,
        vision_layers=1,
    )
    data = make_mlvu(tmp_path / "ml", clip)
    out = tmp_path / "out"
    assert (
        main(["eval", "mlvu", "--data", str(data), "--model", str(ckpt), "--out", str(out), "--max-frames", "4"]) == 0
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"].endswith("Only give the best option.\n\nBest option: (")
    ml = benchmark("mlvu", "video_xl")
    assert [r["extracted"] for r in rows] == [ml.extract(r["output"], None) for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["prompt_style"] == "video_xl" and summary["settings"]["model_family"] == "video_xl"
    # score-only: VideoChat-Flash's rule unless --prompts says otherwise ("B) Red" -> "B" under both; "b" differs)
    given = put(tmp_path / "o.jsonl", json.dumps({"id": "1_plotQA/0", "output": "b"}) + "\n")
    for prompts, expected in [("auto", 1.0), ("video_xl", 0.0)]:
        o = tmp_path / f"s{prompts}"
        args = ["eval", "mlvu", "--data", str(data), "--out", str(o), "--score-only", str(given), "--prompts", prompts]
        assert main(args) == 0
        assert json.loads((o / "summary.json").read_text())["by"]["task"]["1_plotQA"]["accuracy"] == expected


# hand-written outputs per benchmark -> the expected overall score (worked out from the official rules)
SCORE_ONLY = {
    "mvbench": ({"action_sequence/0": "(B) ran", "action_sequence/1": "A", "object_existence/0": "yes"}, 2 / 3),
    "videomme": ({"001-1": "The best answer is B.", "001-2": "Because of it, D", "002-1": "C"}, 1 / 3),
    "mlvu": ({"1_plotQA/0": "B", "4_count/0": "It is (A)"}, 1 / 2),
    "longvideobench": ({"lvq1": "(B)", "lvq2": "The answer is A."}, 1.0),
    "lvbench": ({"u1": "B. blue", "u2": "c"}, 1 / 2),
    "charades-sta": ({"0": "The event happens in 0.0 - 1.2 seconds.", "1": "nothing"}, 1 / 2),
}


BY = {
    "mvbench": {"task"},
    "videomme": {"task", "duration", "domain", "sub_category"},
    "mlvu": {"task", "question_type"},
    "longvideobench": {"task", "duration_group"},
    "lvbench": {"task", "question_type"},
    "charades-sta": {"task"},
}


@pytest.mark.parametrize("bench", list(SCORE_ONLY))
def test_score_only(tmp_path, clip, bench, capsys):
    data = MAKERS[bench](tmp_path / "data", clip)
    outputs, expected = SCORE_ONLY[bench]
    given = put(
        tmp_path / "outputs.jsonl", "".join(json.dumps({"id": k, "output": v}) + "\n" for k, v in outputs.items())
    )
    assert main(["eval", bench, "--data", str(data), "--out", str(tmp_path / "out"), "--score-only", str(given)]) == 0
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["overall"] == pytest.approx(expected)
    assert set(summary["by"]) == BY[bench]  # a grouping equal to the task one is listed once
    rows = [json.loads(line) for line in (tmp_path / "out/predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == IDS[bench]
    assert (tmp_path / "out/accuracy.png").stat().st_size > 1000


def test_mlvu_mean_over_tasks_and_lvbench_types(tmp_path, clip):
    for bench, outputs in [("mlvu", {"1_plotQA/0": "B"}), ("lvbench", {"u1": "B", "u2": "B"})]:
        data = MAKERS[bench](tmp_path / bench, clip)
        given = put(
            tmp_path / f"{bench}.jsonl", "".join(json.dumps({"id": k, "output": v}) + "\n" for k, v in outputs.items())
        )
        assert (
            main(["eval", bench, "--data", str(data), "--out", str(tmp_path / f"o{bench}"), "--score-only", str(given)])
            == 0
        )
    mlvu = json.loads((tmp_path / "omlvu/summary.json").read_text())
    assert mlvu["counts"]["missing_predictions"] == 1 and mlvu["mean_over_tasks"] == 1.0  # only one task scored
    lv = json.loads((tmp_path / "olvbench/summary.json").read_text())
    assert lv["by"]["question_type"]["event understanding"]["accuracy"] == 1.0  # u1 counts in both of its types
    assert lv["by"]["question_type"]["temporal grounding"]["accuracy"] == 0.0


@pytest.mark.parametrize("bench", list(MAKERS))
def test_end_to_end_with_bundled_model(tmp_path, clip, bench):
    """Each benchmark through the real pipeline; scores agree with the extraction of the model's own outputs."""
    data = MAKERS[bench](tmp_path / "data", clip)
    out = tmp_path / "out"
    assert main(["eval", bench, "--data", str(data), "--out", str(out), "--max-frames", "8"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == IDS[bench]
    b = benchmark(bench)
    questions = {q.id: q for q in b.load(data)}
    for r in rows:
        assert r["prompt"] == questions[r["id"]].prompt
        if r["error"] is None:
            assert isinstance(r["output"], str) and 1 <= r["frames"] <= 16  # the family's frame floor may win
            assert r["score"] == b.score(b.extract(r["output"], questions[r["id"]]), questions[r["id"]])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["missing_video"] == MISSING.get(bench, 0)
    assert summary["counts"]["questions"] == len(IDS[bench])
    assert summary["overall"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    assert summary["settings"]["max_frames"] == 8 and len(summary["settings"]["model_fingerprint"]) == 16
    assert (out / "accuracy.png").is_file()


def test_bad_inputs(tmp_path, capsys):
    assert main(["eval", "nosuch", "--data", str(tmp_path)]) == 2
    assert main(["eval", "mvbench", "--data", str(tmp_path / "none")]) == 2
    assert main(["eval", "mvbench", "--data", str(tmp_path)]) == 2  # no task json
    assert main(["eval", "mvbench", "--data", str(tmp_path), "--prompts", "gpt"]) == 2
    put(tmp_path / "json/action_sequence.json", [{"video": "a.mp4"}])
    assert main(["eval", "mvbench", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--prompts must be" in err
    assert "unknown benchmark" in err and "missing question, candidates, answer" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ resume, shards


def many_questions(root: Path, clip: Path, n: int) -> Path:
    put(root / "video/clevrer/video_validation/c1.mp4", clip)
    put(
        root / "json/object_existence.json",
        [
            {"video": "c1.mp4", "question": f"Is there object {i}?", "candidates": ["yes", "no"], "answer": "no"}
            for i in range(n)
        ],
    )
    return root


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_resume_after_kill_keeps_every_row_once(tmp_path, clip):
    data = many_questions(tmp_path / "data", clip, 8)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "longvid",
        "eval",
        "mvbench",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-frames",
        "8",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "predictions.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.is_file() or log.read_bytes().count(b"\n") < 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = log.read_bytes().count(b"\n")
    assert 2 <= before < 8
    with log.open("ab") as f:  # as if killed in the middle of a write
        f.write(b'{"id": "object_existence/7", "out')
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    ids = [r["id"] for r in _rows(out)]
    assert ids == [f"object_existence/{i}" for i in range(8)]  # each exactly once, in order
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["predictions"] == 8


def test_two_processes_equal_one(tmp_path, clip, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = many_questions(tmp_path / "data", clip, 5)
    assert main(["eval", "mvbench", "--data", str(data), "--out", str(tmp_path / "one"), "--max-frames", "8"]) == 0
    assert (
        main(
            [
                "eval",
                "mvbench",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "two"),
                "--max-frames",
                "8",
                "--nproc",
                "2",
            ]
        )
        == 0
    )
    keys = ("id", "prompt", "output", "extracted", "score", "frames")
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [{k: r[k] for k in keys} for r in one] == [{k: r[k] for k in keys} for r in two]
    assert not list((tmp_path / "two").glob("predictions.rank*"))
    assert json.loads((tmp_path / "two/summary.json").read_text())["settings"]["processes"] == 2
    # resuming a folder with other settings would mix two runs' rows: refused
    assert main(["eval", "mvbench", "--data", str(data), "--out", str(tmp_path / "one"), "--max-frames", "12"]) == 2
    assert "other settings (max_frames)" in capsys.readouterr().err


def test_feature_cache_spares_a_second_setting(tmp_path, clip):
    """Questions on one video share its encoding; with --cache-dir another run on the same videos (here with
    subtitles) skips decoding and encoding."""
    data = make_videomme(tmp_path / "data", clip)
    cache = tmp_path / "cache"
    for bench in ("videomme", "videomme-sub"):
        assert (
            main(
                [
                    "eval",
                    bench,
                    "--data",
                    str(data),
                    "--out",
                    str(tmp_path / bench),
                    "--max-frames",
                    "8",
                    "--cache-dir",
                    str(cache),
                    "--limit",
                    "2",
                ]
            )
            == 0
        )
    assert [r["cache_hit"] for r in _rows(tmp_path / "videomme")] == [False, True]
    assert [r["cache_hit"] for r in _rows(tmp_path / "videomme-sub")] == [True, True]


def test_videomme_parquet_as_distributed(tmp_path, clip):
    """The official videomme/test-00000-of-00001.parquet reads to the same questions as its json records."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    data = make_videomme(tmp_path / "vm", clip)
    docs = json.loads((data / "videomme/test.json").read_text())
    (data / "videomme/test.json").unlink()
    pq.write_table(pa.Table.from_pylist(docs), data / "videomme/test-00000-of-00001.parquet")
    got = benchmark("videomme").load(data)
    assert [q.id for q in got] == ["001-1", "001-2", "002-1"] and got[1].answer == "D"
    assert got[0].prompt.endswith(
        "Option:\nA. one\nB. two\nC. three\nD. four\nAnswer with the option's letter from the given choices directly."
    )
    assert got[0].video.endswith("data/v1.mp4") and got[0].groups["duration"] == "short"


def test_shares_group_questions_by_video():
    from longvid.eval.runner import Shard, my_share

    qs = [Question(id=str(i), task="t", video=f"v{i % 3}", prompt="", answer="A") for i in range(7)]
    assert [q.id for q in my_share(qs, Shard(0, 1))] == ["0", "3", "6", "1", "4", "2", "5"]
    assert [q.id for q in my_share(qs, Shard(0, 2))] == ["0", "3", "6", "2", "5"]
    assert [q.id for q in my_share(qs, Shard(1, 2))] == ["1", "4"]
