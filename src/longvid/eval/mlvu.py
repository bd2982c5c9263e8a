"""MLVU (dev, multiple choice): json/<n>_<task>.json (video, duration, question, candidates, answer text,
question_type), videos under video/<n>_<task>/.

Prompt and scoring: VideoChat-Flash's lmms-eval fork, lmms-eval_videochat/lmms_eval/tasks/mlvu_mc/utils.py
(`mlvu_mc_doc_to_text`: "Question:" with no space; `mcq_acc`) and its yamls' default post_prompt.
MLVU's headline "M-Avg" is the mean of the per-task accuracies (summary: `mean_over_tasks`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Benchmark, Question, first_existing, need, read_json
from .choice import mcq_letter
from .mvbench import gold_letter, mc_prompt

TASKS = ("1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco", "7_topic_reasoning")
POST_PROMPT = "Answer with the option's letter from the given choices directly."


class MLVU(Benchmark):
    name = "mlvu"

    def load(self, data: Path) -> list[Question]:
        folder = data / "json" if (data / "json").is_dir() else data
        files = [folder / f"{t}.json" for t in TASKS if (folder / f"{t}.json").is_file()]
        if not files:
            raise InputError(f"{data}: no MLVU dev json (expected json/<task>.json, e.g. json/1_plotQA.json)")
        video_root = data / "video" if (data / "video").is_dir() else data
        out = []
        for path in files:
            task = path.stem
            items = read_json(path)
            if not isinstance(items, list):
                raise InputError(f"{path}: expected a list of questions")
            for i, item in enumerate(items):
                need(item, ("video", "question", "candidates", "answer"), f"{path}[{i}]")
                out.append(
                    Question(
                        id=f"{task}/{i}",
                        task=task,
                        video=str(first_existing(video_root / task / item["video"])),
                        prompt=mc_prompt(item["question"], item["candidates"], POST_PROMPT, sep=""),
                        answer=gold_letter(item["candidates"], item["answer"]),
                        groups={"task": task, "question_type": str(item.get("question_type", task))},
                    )
                )
        return out

    def extract(self, output: str, q: Question) -> str:
        return mcq_letter(output)

    def score(self, extracted, q: Question) -> float:
        return float(q.answer is not None and extracted == q.answer)
