"""LVBench: the official video_info.meta.jsonl (one line per video: key, type, qa: [{uid, question with its
"(A) ..." options, answer letter, question_type: [...]}]), videos <key>.mp4 under videos/ (or DIR itself).
The lmms-eval fork's cleaned json (video, type, question, candidates "(A) ...", answer text) is read too.

Prompt and scoring: VideoChat-Flash's lmms-eval fork, lmms-eval_videochat/lmms_eval/tasks/lvbench/utils.py
(`lvbench_mc_doc_to_text`: question, then "A. <candidate>" lines, then the post_prompt; `mcq_acc`).
The official jsonl has the options inside the question, so there the option lines are not added again.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Benchmark, Question, first_existing, letters, need, read_json, read_jsonl
from .choice import mcq_letter
from .mvbench import gold_letter

POST_PROMPT = "Answer with the option's letter from the given choices directly."


class LVBench(Benchmark):
    name = "lvbench"

    def _video(self, data: Path, key: str) -> str:
        key = str(key)
        names = [key] if Path(key).suffix else [f"{key}.mp4", f"{key}.mkv", key]
        return str(first_existing(*[d / n for n in names for d in (data / "videos", data)]))

    def load(self, data: Path) -> list[Question]:
        meta = sorted(data.glob("*.jsonl"))
        clean = sorted(data.glob("*.json")) or sorted(data.glob("json/lvbench_clean.json"))
        out: list[Question] = []
        if meta:
            for n, video in enumerate(read_jsonl(meta[0])):
                need(video, ("key", "qa"), f"{meta[0]}:{n + 1}")
                for j, qa in enumerate(video["qa"]):
                    need(qa, ("uid", "question", "answer"), f"{meta[0]}:{n + 1} qa[{j}]")
                    types = qa.get("question_type") or []
                    out.append(
                        Question(
                            id=str(qa["uid"]),
                            task=str(video.get("type", "")),
                            video=self._video(data, video["key"]),
                            prompt=qa["question"] + "\n" + POST_PROMPT,
                            answer=str(qa["answer"]).strip().strip("()"),
                            groups={
                                "type": str(video.get("type", "")),
                                "question_type": list(types) if isinstance(types, list) else [str(types)],
                            },
                        )
                    )
            return out
        if not clean:
            raise InputError(f"{data}: no LVBench annotation (expected video_info.meta.jsonl)")
        items = read_json(clean[0])
        if not isinstance(items, list):
            raise InputError(f"{clean[0]}: expected a list of questions")
        for i, item in enumerate(items):
            need(item, ("video", "question", "candidates", "answer"), f"{clean[0]}[{i}]")
            options = "".join(
                f"{letter}. {c}\n" for letter, c in zip(letters(len(item["candidates"])), item["candidates"])
            )
            types = item.get("question_type") or []
            out.append(
                Question(
                    id=f"{clean[0].stem}/{i}",
                    task=str(item.get("type", "")),
                    video=self._video(data, item["video"]),
                    prompt=item["question"] + "\n" + options + POST_PROMPT,
                    answer=gold_letter(item["candidates"], item["answer"]),
                    groups={
                        "type": str(item.get("type", "")),
                        "question_type": list(types) if isinstance(types, list) else [str(types)],
                    },
                )
            )
        return out

    def extract(self, output: str, q: Question) -> str:
        return mcq_letter(output)

    def score(self, extracted, q: Question) -> float:
        return float(q.answer is not None and extracted == q.answer)
