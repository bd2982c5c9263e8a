"""`lmms-eval --model longvid ...`: the real lmms-eval command line, upstream and unchanged, finds longvid through
its entry point and runs local tasks on a tiny MVBench-layout dataset made here, with the bundled model:

* generate_until: the outputs lmms-eval logs are exactly `longvid eval mvbench`'s outputs for the same prompts,
  frames and clip bounds, and its accuracy is what VideoChat-Flash's answer rule gives for them;
* multiple_choice (loglikelihood requests with string targets) and loglikelihood (a callable target): the
  values lmms-eval logs are lmms-eval's loss convention (mean negative log-likelihood per target token) of the
  longvid API's log-probabilities, and its acc (argmin over the choices) follows from them.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is installed only in .venv-lmms: run `make test-lmms`")

MAX_FRAMES = 8
TASKS = ("longvid_toy_gen", "longvid_toy_mc", "longvid_toy_ll")

UTILS = '''
from longvid.eval.choice import mcq_letter


def doc_to_visual(doc):
    """[path] or, with clip bounds, [path, {"start", "end"}] (the VideoChat-Flash fork's media dict)."""
    media = {k: doc[k] for k in ("start", "end") if doc.get(k) is not None}
    return [doc["video"], media] if media else [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


def process_gen(doc, results):
    return {"letter_accuracy": float(mcq_letter(results[0]) == doc["answer"])}


def process_ll(doc, results):
    # lmms-eval's own loglikelihood scoring unpacks `results` itself and fails on its one-element list
    # (api/task.py: `ll, is_greedy = results`), so loglikelihood tasks bring their process_results, as its own do
    loss, greedy = results[0]
    return {"mean_nll": loss, "greedy": float(greedy)}
'''

COMMON = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
"""

YAMLS = {
    "longvid_toy_gen": """task: longvid_toy_gen
{common}output_type: generate_until
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
  do_sample: false
  until: ["<|im_end|>"]
process_results: !function utils.process_gen
metric_list:
  - metric: letter_accuracy
    aggregation: mean
    higher_is_better: true
""",
    "longvid_toy_mc": """task: longvid_toy_mc
{common}output_type: multiple_choice
doc_to_choice: candidates
doc_to_target: answer_index
metric_list:
  - metric: acc
""",
    "longvid_toy_ll": """task: longvid_toy_ll
{common}output_type: loglikelihood
doc_to_target: answer_text
process_results: !function utils.process_ll
metric_list:
  - metric: mean_nll
    aggregation: mean
    higher_is_better: false
  - metric: greedy
    aggregation: mean
    higher_is_better: true
""",
}


def put(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        shutil.copy(content, path)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def make_mvbench(root: Path) -> Path:
    """Two MVBench tasks in the official layout, on two generated clips (one question with clip bounds)."""
    from longvid.data.synthetic import moving_shapes, write_video

    a = write_video(root / "clips/a.mp4", moving_shapes(30, 48, 64, seed=1), fps=10)
    b = write_video(root / "clips/b.mp4", moving_shapes(30, 48, 64, seed=2), fps=10)
    put(root / "video/star/Charades_v1_480/a.mp4", a)
    put(root / "video/clevrer/video_validation/b.mp4", b)
    put(
        root / "json/action_sequence.json",
        [
            {
                "video": "a.mp4",
                "question": "What shape moves?",
                "candidates": ["circle", "square", "star"],
                "answer": "square",
                "start": 0.5,
                "end": 2.5,
            },
            {"video": "a.mp4", "question": "Which colour?", "candidates": ["red", "blue"], "answer": "red"},
        ],
    )
    put(
        root / "json/object_existence.json",
        [{"video": "b.mp4", "question": "Does a cube exist?", "candidates": ["yes", "no"], "answer": "no"}],
    )
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`longvid eval mvbench`, then `lmms-eval` on the same questions; both outputs and the wall times."""
    from longvid.assets import default_model_path
    from longvid.cli import main
    from longvid.eval import benchmark

    root = tmp_path_factory.mktemp("lmms")
    data = make_mvbench(root / "mvbench")
    t0 = time.perf_counter()
    ours_out = root / "ours"
    assert main(["eval", "mvbench", "--data", str(data), "--out", str(ours_out), "--max-frames", str(MAX_FRAMES)]) == 0
    ours_s = time.perf_counter() - t0
    ours = [json.loads(line) for line in (ours_out / "predictions.jsonl").read_text().splitlines()]
    questions = benchmark("mvbench").load(data)
    raw = {q.task: json.loads((data / "json" / f"{q.task}.json").read_text()) for q in questions}
    docs = [
        {
            "id": q.id,
            "video": q.video,
            "start": q.start,
            "end": q.end,
            "prompt": q.prompt,
            "answer": q.answer,
            "candidates": raw[q.task][int(q.id.split("/")[1])]["candidates"],
        }
        for q in questions
    ]
    for d in docs:
        d["answer_index"] = "ABCDE".index(d["answer"])
        d["answer_text"] = " " + d["candidates"][d["answer_index"]]
    tasks = root / "tasks"
    put(tasks / "utils.py", UTILS)
    docs_file = put(tasks / "docs.json", docs)
    for name, text in YAMLS.items():
        put(tasks / f"{name}.yaml", text.format(common=COMMON.format(docs=docs_file)))
    out = root / "lmms-out"
    cmd = [
        str(Path(sys.executable).with_name("lmms-eval")),
        "--model",
        "longvid",
        "--model_args",
        f"pretrained={default_model_path()},max_frames={MAX_FRAMES}",
        "--tasks",
        ",".join(TASKS),
        "--include_path",
        str(tasks),
        "--batch_size",
        "1",
        "--log_samples",
        "--output_path",
        str(out),
    ]
    env = {**os.environ, "HF_HOME": str(root / "hf"), "WANDB_MODE": "disabled", "PYTHONPATH": str(tasks)}
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    lmms_s, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    lmms_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    log = proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, log
    results = list(out.rglob("*results.json"))
    assert len(results) == 1, log
    [results] = results
    samples = {t: [json.loads(x) for x in next(out.rglob(f"*samples_{t}.jsonl")).open()] for t in TASKS}
    timing = f"lmms-eval (3 tasks x {len(docs)} docs): {lmms_s:.1f} s, CPU {lmms_cpu:.1f} s"
    print(f"\nlongvid eval: {ours_s:.1f} s; {timing}")
    return {"docs": docs, "ours": ours, "results": json.loads(results.read_text()), "samples": samples}


def by_doc(samples: list[dict]) -> dict[int, dict]:
    return {s["doc_id"]: s for s in samples}


def test_generate_until_equals_longvid_eval(run):
    docs, ours = run["docs"], {r["id"]: r for r in run["ours"]}
    gen = by_doc(run["samples"]["longvid_toy_gen"])
    assert sorted(gen) == list(range(len(docs)))
    for i, doc in enumerate(docs):
        resp = gen[i]["filtered_resps"]  # take_first leaves the text itself (a one-letter answer hid this)
        text = resp if isinstance(resp, str) else resp[0]
        assert text == ours[doc["id"]]["output"] and text  # same prompt, frames and clip -> the same greedy text
        assert gen[i]["letter_accuracy"] == ours[doc["id"]]["score"]  # the same answer rule on it
    expected = sum(r["score"] for r in ours.values()) / len(ours)
    assert run["results"]["results"]["longvid_toy_gen"]["letter_accuracy,none"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def api():
    """The longvid API the plugin is compared with: its pipeline on the bundled model."""
    import longvid
    from longvid.assets import default_model_path
    from longvid.pipeline import Pipeline

    model = longvid.load(default_model_path())
    return model, Pipeline(model)


def api_loss(api, doc: dict, continuation: str) -> tuple[float, bool]:
    """(mean negative log-likelihood per token, greedy?) of `continuation` from the longvid API."""
    from longvid.options import SamplingOptions

    model, pipeline = api
    sampling = SamplingOptions(max_frames=MAX_FRAMES, start=doc["start"], end=doc["end"])
    prompt, visual, _ = pipeline.visual(doc["video"], sampling, question=doc["prompt"])
    ids = model.tokenizer.encode(continuation, add_special_tokens=False)
    logprob, greedy = pipeline.continuation_logprob(prompt, visual, ids)
    return -logprob / len(ids), greedy


def test_multiple_choice_losses_equal_the_api(run, api):
    docs = run["docs"]
    mc = by_doc(run["samples"]["longvid_toy_mc"])
    correct = []
    for i, doc in enumerate(docs):
        # the samples log holds each choice's (loss, is_greedy) as text
        logged = [(float(loss), greedy in (True, "True")) for loss, greedy in mc[i]["filtered_resps"]]
        assert len(logged) == len(doc["candidates"])
        for (loss, greedy), choice in zip(logged, doc["candidates"]):
            want_loss, want_greedy = api_loss(api, doc, " " + choice)  # lmms-eval's target_delimiter " "
            assert loss == pytest.approx(want_loss, rel=1e-5) and greedy == want_greedy
            assert math.isfinite(loss) and loss > 0
        best = min(range(len(logged)), key=lambda k: logged[k][0])  # lmms-eval: argmin of the losses
        correct.append(float(best == doc["answer_index"]))
        assert mc[i]["acc"] == correct[-1]
    assert run["results"]["results"]["longvid_toy_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_loglikelihood_with_a_callable_target(run, api):
    docs = run["docs"]
    ll = by_doc(run["samples"]["longvid_toy_ll"])
    losses, greedy = [], []
    for i, doc in enumerate(docs):
        want_loss, want_greedy = api_loss(api, doc, doc["answer_text"])
        assert ll[i]["mean_nll"] == pytest.approx(want_loss, rel=1e-5)
        assert ll[i]["greedy"] == float(want_greedy)
        losses.append(want_loss)
        greedy.append(float(want_greedy))
    got = run["results"]["results"]["longvid_toy_ll"]
    assert got["mean_nll,none"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert got["greedy,none"] == pytest.approx(sum(greedy) / len(greedy))


def test_results_file_records_the_model_args(run):
    config = run["results"]["config"]
    assert config["model"] == "longvid" and f"max_frames={MAX_FRAMES}" in str(config["model_args"])
    assert set(run["results"]["results"]) == set(TASKS)
