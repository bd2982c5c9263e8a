"""LongVideoBench: the official lvb_val.json (id, video_path, subtitle_path, question, candidates,
correct_choice (an index), duration, duration_group, question_category, starting_timestamp_for_subtitles),
videos under videos/, subtitles under subtitles/ (the "_en.json" files).

Prompt (subtitles interleaved by frame time, as in the fork's longvideobench_val_v.yaml with
insert_interleave_subtitles) and answer extraction (MMMU's parser): VideoChat-Flash's lmms-eval fork,
lmms-eval_videochat/lmms_eval/tasks/longvideobench/utils.py (`longvideobench_doc_to_text`,
`insert_subtitles_into_frames`, `compute_frame_timestamps`, `parse_multi_choice_response`).
Without a subtitle file the prompt is upstream lmms-eval's plain one: question, options, post-prompt.

Video-XL ("video_xl" style) ran upstream lmms-eval's `longvideobench_val_v` as it was in September 2024 (v0.2.3,
lmms_eval/tasks/longvideobench/utils.py `longvideobench_doc_to_text`, longvideobench_val_v.yaml, through
Video-XL/eval/videoxl.py): no subtitles, options as "A. text", the same post-prompt and MMMU parser.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from .base import Benchmark, Question, letters, need, read_json
from .choice import mmmu_letter

POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"
SUBTITLE_FRAMES = 512  # the fork's dataset_kwargs max_num_frames default for the subtitle timeline


def _seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def frame_times(duration: float, frames: int = SUBTITLE_FRAMES) -> list[float]:
    if duration > frames:
        return [duration / frames * i for i in range(frames)]
    return [float(i) for i in range(int(duration))]


def interleaved_subtitles(subtitles: list[dict], offset: float, duration: float) -> str:
    """The subtitle lines that some sampled frame time falls inside (lines shorter than 1 s count as 1 s)."""
    times = frame_times(duration)
    kept = []
    for sub in subtitles:
        if "timestamp" in sub:
            start, end = sub["timestamp"]
            end = end if isinstance(end, float) else duration
            text = sub["text"]
        else:
            start, end, text = _seconds(sub["start"]), _seconds(sub["end"]), sub["line"]
        start, end = start - offset, end - offset
        middle = (start + end) / 2
        if end - start < 1:
            start, end = middle - 0.5, middle + 0.5
        if any(start < t < end for t in times):
            kept.append(text)
    return "\n".join(kept)


class LongVideoBench(Benchmark):
    name = "longvideobench"
    max_new_tokens = 32
    styles = ("videochat_flash", "video_xl")

    def load(self, data: Path) -> list[Question]:
        path = next((p for p in (data / "lvb_val.json", data / "lvb_test_wo_gt.json") if p.is_file()), None)
        if path is None:
            raise InputError(f"{data}: no LongVideoBench annotation (expected lvb_val.json)")
        items = read_json(path)
        if not isinstance(items, list):
            raise InputError(f"{path}: expected a list of questions")
        out = []
        for i, doc in enumerate(items):
            need(doc, ("id", "video_path", "question", "candidates"), f"{path}[{i}]")
            cands = [c for c in doc["candidates"] if c != "N/A"]
            option = "{}. {}" if self.style == "video_xl" else "({}). {}"
            question = doc["question"] + "\n" + "\n".join(option.format(*lc) for lc in zip(letters(len(cands)), cands))
            prompt = f"{question}\n{POST_PROMPT}"
            sub_name = str(doc.get("subtitle_path") or "") if self.style == "videochat_flash" else ""
            if sub_name:
                sub_name = sub_name if "_en.json" in sub_name else sub_name.replace(".json", "_en.json")
                sub_path = data / "subtitles" / sub_name
                if sub_path.is_file():
                    try:
                        subs = json.loads(sub_path.read_text(encoding="utf-8"))
                    except (OSError, json.JSONDecodeError) as e:
                        raise InputError(f"{sub_path}: not a readable subtitle json ({e})") from None
                    text = interleaved_subtitles(
                        subs, float(doc.get("starting_timestamp_for_subtitles", 0)), float(doc.get("duration", 0))
                    )
                    prompt = (
                        f" This video's subtitles are listed below: \n{text}.\n Select the best answer to the "
                        "following multiple-choice question based on the video and the subtitles. Respond with "
                        f"only the letter of the correct option.\nQuestion: {question}\n{POST_PROMPT}"
                    )
            gold = doc.get("correct_choice")
            out.append(
                Question(
                    id=str(doc["id"]),
                    task=str(doc.get("question_category", "")),
                    video=str(data / "videos" / doc["video_path"]),
                    prompt=prompt,
                    answer=letters(26)[gold] if isinstance(gold, int) else None,
                    groups={
                        "duration_group": str(doc.get("duration_group", "")),
                        "question_category": str(doc.get("question_category", "")),
                    },
                    extra={"options": cands},
                )
            )
        return out

    def extract(self, output: str, q: Question) -> str:
        return mmmu_letter(output, q.extra["options"], seed=q.id)
