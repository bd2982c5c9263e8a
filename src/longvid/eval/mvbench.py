"""MVBench: 20 tasks, one official json per task (json/<task>.json: video, question, candidates, answer text;
some with start/end seconds), videos under video/<source dataset>/.

Prompt, post-prompt and scoring: VideoChat-Flash's lmms-eval fork,
lmms-eval_videochat/lmms_eval/tasks/mvbench/utils.py (`mvbench_doc_to_text`, `mvbench_process_results`) and
the task yamls (post_prompt "\\nOnly give the best option.", max_new_tokens 16).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Benchmark, Question, first_existing, letters, need, read_json
from .choice import mcq_letter

# task -> (folders the videos live in: the official release's name first, the lmms-eval fork's second,
# input fps of frame folders). From MVBench's `data_list` and the fork's DATA_LIST.
TASKS: dict[str, tuple[tuple[str, ...], float | None]] = {
    "action_sequence": (("star/Charades_v1_480",), None),
    "action_prediction": (("star/Charades_v1_480",), None),
    "action_antonym": (("ssv2_video", "ssv2-video"), None),
    "fine_grained_action": (("Moments_in_Time_Raw/videos",), None),
    "unexpected_action": (("FunQA_test/test", "funqa-test/test"), None),
    "object_existence": (("clevrer/video_validation",), None),
    "object_interaction": (("star/Charades_v1_480",), None),
    "object_shuffle": (("perception/videos",), None),
    "moving_direction": (("clevrer/video_validation",), None),
    "action_localization": (("sta/sta_video",), None),
    "scene_transition": (("scene_qa/video", "scene-qa/video"), None),
    "action_count": (("perception/videos",), None),
    "moving_count": (("clevrer/video_validation",), None),
    "moving_attribute": (("clevrer/video_validation",), None),
    "state_change": (("perception/videos",), None),
    "fine_grained_pose": (("nturgbd",), None),
    "character_order": (("perception/videos",), None),
    "egocentric_navigation": (("vlnqa",), None),
    "episodic_reasoning": (("tvqa/frames_fps3_hq",), 3.0),  # frame folders extracted at 3 fps
    "counterfactual_inference": (("clevrer/video_validation",), None),
}
POST_PROMPT = "\nOnly give the best option."


def mc_prompt(question: str, candidates: list[str], post_prompt: str, sep: str = " ") -> str:
    """ "Question: q\\nOption:\\n(A) x\\n(B) y\\n" + post-prompt (MVBench uses "Question: ", MLVU "Question:")."""
    options = "".join(f"({letter}) {c}\n" for letter, c in zip(letters(len(candidates)), candidates))
    return f"Question:{sep}{question}\nOption:\n{options}{post_prompt}"


def gold_letter(candidates: list[str], answer: str) -> str | None:
    """The letter of the candidate equal to the answer text (None: no candidate is; scored 0 as upstream)."""
    for letter, c in zip(letters(len(candidates)), candidates):
        if c == answer:
            return letter
    return None


class MVBench(Benchmark):
    name = "mvbench"
    long = False

    def load(self, data: Path) -> list[Question]:
        folder = data / "json" if (data / "json").is_dir() else data
        files = [folder / f"{t}.json" for t in TASKS if (folder / f"{t}.json").is_file()]
        if not files:
            raise InputError(
                f"{data}: no MVBench task json (expected json/<task>.json, e.g. json/action_sequence.json)"
            )
        video_root = data / "video" if (data / "video").is_dir() else data
        out = []
        for path in files:
            task = path.stem
            items = read_json(path)
            if not isinstance(items, list):
                raise InputError(f"{path}: expected a list of questions")
            folders, input_fps = TASKS[task]
            for i, item in enumerate(items):
                need(item, ("video", "question", "candidates", "answer"), f"{path}[{i}]")
                video = first_existing(*[video_root / f / item["video"] for f in folders])
                out.append(
                    Question(
                        id=f"{task}/{i}",
                        task=task,
                        video=str(video),
                        prompt=mc_prompt(item["question"], item["candidates"], POST_PROMPT),
                        answer=gold_letter(item["candidates"], item["answer"]),
                        groups={"task": task},
                        start=item.get("start"),
                        end=item.get("end"),
                        extra={"input_fps": input_fps},
                    )
                )
        return out

    def extract(self, output: str, q: Question) -> str:
        return mcq_letter(output)

    def score(self, extracted, q: Question) -> float:
        return float(q.answer is not None and extracted == q.answer)
