"""Run a benchmark through the pipeline: one row per question in predictions.jsonl, resumable, sharded.

* Every question takes the one pipeline route (`Pipeline.ask`): the same frames, prompt template and
  budget checks as `longvid ask`. Questions on the same video reuse its encoding through the feature
  cache (in memory, and on disk with --cache-dir, so another run on the same videos skips decode+encode).
* Each finished question is appended as one whole, fsync'd line (niah/records.py); a run killed at any
  instant resumes with every finished row kept once and the rest asked again.
* Order and sharding: questions are answered video by video (so the feature cache holds the video being
  asked about, whatever the annotation order). With WORLD_SIZE > 1 (torchrun, accelerate, `--nproc`)
  rank r answers the questions of videos r, r+W, ... (in order of first appearance) into
  predictions.rank<r>.jsonl; after a barrier rank 0 merges every row, once, in annotation order,
  into predictions.jsonl (replaced atomically) and writes summary.json and the chart. Greedy decoding
  of one question does not depend on the others, so any process count gives the same predictions.
* A missing or unreadable video is a row with `error` (scored 0), counted in the summary; never fatal.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError, LongvidError
from ..niah.records import RecordWriter, read_records
from .base import Benchmark, Question, write_atomic

PREDICTIONS = "predictions.jsonl"

# Frames per video the papers' evaluations used, by family: VideoChat-Flash's lmms-eval scripts pass
# max_num_frames=512 (640 for LVBench; lmms-eval_videochat/scripts/eval_*.sh); Video-XL's lmms-eval run
# uses max_frames_num=128 (Video-XL README, lmms-eval command).
FAMILY_FRAMES = {"videochat_flash": {"default": 512, "lvbench": 640}, "video_xl": {"default": 128}}


def default_frames(family: str, bench: str) -> int | None:
    table = FAMILY_FRAMES.get(family)
    return None if table is None else table.get(bench, table["default"])


@dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def complete_rows(path: Path) -> list[dict]:
    """The complete JSON lines of `path`, read without touching the file (another rank may be writing it)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows = []
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict) and "id" in row:
            rows.append(row)
    return rows


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("predictions.rank*.jsonl"))


def finished_rows(out: Path) -> dict[str, dict]:
    """Every row written so far (merged file first, then the shards), one per id."""
    rows: dict[str, dict] = {}
    for path in [out / PREDICTIONS, *shard_files(out)]:
        for row in complete_rows(path):
            rows.setdefault(str(row["id"]), row)
    return rows


def check_run(out: Path, settings: dict[str, Any], shard: Shard) -> None:
    """Refuse to resume a folder that holds a run with other settings (its rows would be mixed in)."""
    path = out / "run.json"
    keys = ("benchmark", "data", "max_frames", "max_new_tokens", "model_fingerprint", "prompt_style", "score_only")
    mine = {k: settings.get(k) for k in keys}
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            theirs = None
        if isinstance(theirs, dict) and {k: theirs.get(k) for k in keys} != mine:
            diff = [k for k in keys if theirs.get(k) != mine[k]]
            raise ConfigError(f"--out {out} holds a run with other settings ({', '.join(diff)}); use another --out")
    elif shard.main:
        write_atomic(path, json.dumps(mine, indent=2))


def make_row(
    bench: Benchmark,
    q: Question,
    output: str | None,
    error: str | None = None,
    error_kind: str | None = None,
    **info: Any,
) -> dict:
    extracted = bench.extract(output, q) if output is not None else None
    score = bench.score(extracted, q) if output is not None else 0.0
    return {
        "id": q.id,
        "task": q.task,
        "video": q.video,
        "prompt": q.prompt,
        "output": output,
        "extracted": extracted,
        "gold": q.answer,
        "score": score,
        "groups": q.groups,
        "error": error,
        "error_kind": error_kind,
        **info,
    }


def answer_question(pipeline, bench: Benchmark, q: Question, max_frames: int | None) -> dict:
    """One question through the pipeline; a missing/unreadable video becomes an error row."""
    from ..options import GenerationOptions, SamplingOptions

    if not Path(q.video).exists():
        return make_row(bench, q, None, f"missing video {q.video}", "missing_video")
    t0 = time.perf_counter()
    try:
        sampling = SamplingOptions(max_frames=max_frames, start=q.start, end=q.end, input_fps=q.extra.get("input_fps"))
        gen = GenerationOptions(max_new_tokens=bench.max_new_tokens, do_sample=False, temperature=0.0)
        answer, hit = pipeline.ask(q.video, q.prompt, sampling, gen=gen)
    except (LongvidError, OSError, EOFError, ValueError) as e:  # decoding errors, bad clip bounds, budget
        kind = "budget" if type(e).__name__ == "BudgetError" else "unreadable_video"
        return make_row(bench, q, None, f"{type(e).__name__}: {e}", kind)
    return make_row(
        bench,
        q,
        answer.text.strip(),
        frames=answer.num_frames,
        visual_tokens=answer.num_visual_tokens,
        cache_hit=hit,
        seconds=round(time.perf_counter() - t0, 3),
    )


def my_share(questions: list[Question], shard: Shard) -> list[Question]:
    """This rank's questions, grouped by video: video j (by first appearance) goes to rank j % world."""
    videos = {v: j for j, v in enumerate(dict.fromkeys(q.video for q in questions))}
    mine = [q for q in questions if videos[q.video] % shard.world == shard.rank]
    return sorted(mine, key=lambda q: videos[q.video])  # stable: annotation order within a video


def merge(out: Path, questions: list[Question]) -> list[dict]:
    """predictions.jsonl := every finished row once, in annotation order; the shard files are removed."""
    rows = finished_rows(out)
    order = [q.id for q in questions if q.id in rows]
    extra = [i for i in rows if i not in set(order)]  # rows of questions outside this run's --limit stay
    merged = [rows[i] for i in order + extra]
    write_atomic(out / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in merged))
    for path in shard_files(out):  # a kill before this only leaves rows that the next merge dedupes
        path.unlink(missing_ok=True)
    return [rows[i] for i in order]


def run_eval(
    pipeline,
    bench: Benchmark,
    questions: list[Question],
    out: Path,
    settings: dict[str, Any],
    shard: Shard = Shard(),
    progress: bool = True,
) -> dict | None:
    """Answer (or resume) `questions` into `out`; rank 0 returns the summary, other ranks None."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    check_run(out, settings, shard)
    done = finished_rows(out)
    mine = my_share(questions, shard)
    todo = [q for q in mine if q.id not in done]
    log = out / (PREDICTIONS if shard.world == 1 else f"predictions.rank{shard.rank}.jsonl")
    errors = 0
    with (
        RecordWriter(log) as writer,
        tqdm(
            total=len(mine),
            initial=len(mine) - len(todo),
            desc=bench.name,
            unit="q",
            disable=not progress or not shard.main,
            file=sys.stderr,
        ) as bar,
    ):
        for q in todo:
            row = answer_question(pipeline, bench, q, settings.get("max_frames"))
            writer.append(row)
            if row["error"]:
                errors += 1
                bar.write(f"warning: {q.id}: {row['error']}", file=sys.stderr)
            bar.update(1)
    shard.barrier()
    if not shard.main:
        return None
    from .summary import summarize, write_outputs

    rows = merge(out, questions)
    summary = summarize(bench, rows, len(questions), settings)
    write_outputs(out, summary)
    return summary


def score_only(bench: Benchmark, questions: list[Question], outputs: Path, out: Path, settings: dict[str, Any]) -> dict:
    """Score `{"id", "output"}` lines (another engine's, an API model's) without a model."""
    from .summary import summarize, write_outputs

    try:
        given = read_records(outputs) if outputs.is_file() else None
    except OSError as e:
        raise InputError(f"--score-only {outputs}: not readable ({e})") from None
    if given is None:
        raise InputError(f"--score-only {outputs}: no such file")
    by_id: dict[str, str] = {}
    for row in given:
        if "id" in row and isinstance(row.get("output"), str):
            by_id.setdefault(str(row["id"]), row["output"])
    known = {q.id for q in questions}
    rows = [make_row(bench, q, by_id[q.id]) for q in questions if q.id in by_id]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in rows))
    settings = {**settings, "unknown_ids": sum(1 for i in by_id if i not in known)}
    summary = summarize(bench, rows, len(questions), settings)
    write_outputs(out, summary)
    return summary


__all__ = ["FAMILY_FRAMES", "Shard", "answer_question", "default_frames", "merge", "my_share", "run_eval", "score_only"]
