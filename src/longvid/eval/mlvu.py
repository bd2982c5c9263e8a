"""MLVU (dev, multiple choice): json/<n>_<task>.json (video, duration, question, candidates, answer text,
question_type), videos under video/<n>_<task>/.

Prompt and scoring: VideoChat-Flash's lmms-eval fork, lmms-eval_videochat/lmms_eval/tasks/mlvu_mc/utils.py
(`mlvu_mc_doc_to_text`: "Question:" with no space; `mcq_acc`) and its yamls' default post_prompt.
MLVU's headline "M-Avg" is the mean of the per-task accuracies (summary: `mean_over_tasks`).

Video-XL ("video_xl" style) ran upstream lmms-eval's `mlvu` task as it was in September 2024 (v0.2.3,
lmms_eval/tasks/mlvu/utils.py `mlvu_doc_to_text`, `extract_characters_regex`; mlvu.yaml; through
Video-XL/eval/videoxl.py): "\n" + question + "\nOnly give the best option.\n" + "\n" + "Best option: (", and
the answer is the character before the output's first ")" (else the whole stripped output), compared with
the letter. That task reads a re-packed parquet whose `question` field already holds the options; we build
it from the official json as the question line followed by "(A) text" lines (MLVU's own `qa_template` letters,
which the "Best option: (" prefix continues); the parquet itself is not readable offline, so this layout is
inferred, not verified.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Benchmark, Question, first_existing, letters, need, read_json
from .choice import mcq_letter
from .mvbench import gold_letter, mc_prompt

TASKS = ("1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco", "7_topic_reasoning")
POST_PROMPT = "Answer with the option's letter from the given choices directly."


def video_xl_prompt(question: str, candidates: list[str]) -> str:
    options = "".join(f"\n({letter}) {c}" for letter, c in zip(letters(len(candidates)), candidates))
    return "\n" + question + options + "\nOnly give the best option.\n" + "\n" + "Best option: ("


def letter_before_paren(text: str) -> str:
    """Upstream lmms-eval v0.2.3 MLVU `extract_characters_regex`: the character before the first ")"."""
    s = text.strip()
    if ")" in s:
        i = s.index(")")
        return s[i - 1 : i]  # "" when ")" comes first, as upstream's slice gives
    return s


class MLVU(Benchmark):
    name = "mlvu"
    styles = ("videochat_flash", "video_xl")

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
                        prompt=(
                            video_xl_prompt(item["question"], item["candidates"])
                            if self.style == "video_xl"
                            else mc_prompt(item["question"], item["candidates"], POST_PROMPT, sep="")
                        ),
                        answer=gold_letter(item["candidates"], item["answer"]),
                        groups={"task": task, "question_type": str(item.get("question_type", task))},
                    )
                )
        return out

    def extract(self, output: str, q: Question) -> str:
        return letter_before_paren(output) if self.style == "video_xl" else mcq_letter(output)

    def score(self, extracted, q: Question) -> float:
        return float(q.answer is not None and extracted == q.answer)
