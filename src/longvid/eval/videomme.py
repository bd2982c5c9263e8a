"""Video-MME: the official annotation (videomme/test-00000-of-00001.parquet, or the same records as json /
jsonl) with videoID, question_id, duration (short/medium/long), domain, sub_category, task_type, question,
options ["A. ...", ...] and the answer letter; videos data/<videoID>.mp4 (.MP4 / .mkv; the lmms-eval
fork's videos/ also works), subtitles subtitle/<videoID>.srt.

Prompts (with and without subtitles), the "full subtitle" text and answer extraction: VideoChat-Flash's
lmms-eval fork, lmms-eval_videochat/lmms_eval/tasks/videomme/utils.py (`videomme_doc_to_text`,
`videomme_doc_to_text_subtitle`, `extract_characters_regex`) and videomme.yaml's post_prompt.

Video-XL ("video_xl" style, without subtitles) ran upstream lmms-eval's `videomme` task as it was when it was
evaluated (v0.2.3, September 2024: lmms_eval/tasks/videomme/utils.py `videomme_doc_to_text` and videomme.yaml's
default post_prompt, through Video-XL/eval/videoxl.py): the option prompt that mentions subtitles, the options
as the Python text of their list ("['A. one', 'B. two']"), and the post-prompt after an extra newline. Its
subtitle variant (32-frame subtitle selection through OpenCV's frame count) is not reproduced: with subtitles
every family gets the VideoChat-Flash fork's prompt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from .base import Benchmark, Question, first_existing, need, read_json, read_jsonl
from .choice import videomme_letter

PROMPT = (
    "These are the frames of a video. Select the best answer to the following multiple-choice question "
    "based on the video. Respond with only the letter (A, B, C, or D) of the correct option."
)
PROMPT_SUB = (
    "These are the frames and subtitles of a video. Select the best answer to the following "
    "multiple-choice question based on the video and the subtitles. Respond with only the letter "
    "(A, B, C, or D) of the correct option."
)
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
# upstream lmms-eval v0.2.3 `videomme_doc_to_text` (Video-XL): this wording even without subtitles
PROMPT_V023 = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
SUBTITLE_LINE = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
FIELDS = ("videoID", "question_id", "duration", "question", "options", "answer")


def read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"{path}: reading parquet needs pyarrow (pip install 'longvid[eval]'), or give the records as json"
        ) from None
    return pq.read_table(path).to_pylist()


def annotation_file(data: Path) -> Path:
    for pattern in ("videomme/test-*.parquet", "*.parquet", "videomme/*.json", "*.json", "*.jsonl"):
        found = sorted(data.glob(pattern))
        if found:
            return found[0]
    raise InputError(f"{data}: no Video-MME annotation (expected videomme/test-00000-of-00001.parquet)")


def subtitle_text(path: Path) -> str | None:
    """The fork's "full subtitle" text: the first <font> span of each .srt line; None without a file."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(m[0] for line in lines if (m := SUBTITLE_LINE.findall(line)))


class VideoMME(Benchmark):
    name = "videomme"

    def __init__(self, subtitles: bool = False):
        self.subtitles = subtitles
        self.styles = ("videochat_flash",) if subtitles else ("videochat_flash", "video_xl")

    def prompt(self, doc: dict, subtitle: str | None) -> str:
        if self.style == "video_xl":
            return PROMPT_V023 + "\n" + doc["question"] + "\n" + str(list(doc["options"])) + "\n" + POST_PROMPT
        question = "Question: " + doc["question"] + "\nOption:\n" + "\n".join(doc["options"])
        if not self.subtitles:
            return PROMPT + "\n" + question + POST_PROMPT
        # with subtitles the fork ends with "\nThe best answer is:" instead of the yaml's post_prompt
        header = "This video's subtitles are listed below: \n" if subtitle is not None else ""
        option_prompt = PROMPT_SUB if subtitle else PROMPT
        return header + (subtitle or "") + "\n" + option_prompt + "\n" + question + "\n" + "The best answer is:"

    def load(self, data: Path) -> list[Question]:
        path = annotation_file(data)
        if path.suffix == ".parquet":
            docs = read_parquet(path)
        elif path.suffix == ".jsonl":
            docs = read_jsonl(path)
        else:
            docs = read_json(path)
        if not isinstance(docs, list):
            raise InputError(f"{path}: expected a list of records")
        out = []
        for i, doc in enumerate(docs):
            need(doc, FIELDS, f"{path}[{i}]")
            if isinstance(doc["options"], str):  # some exports store the list as its JSON text
                doc["options"] = json.loads(doc["options"])
            vid = doc["videoID"]
            video = first_existing(
                *[data / d / f"{vid}{ext}" for d in ("data", "videos") for ext in (".mp4", ".MP4", ".mkv")]
            )
            subtitle = subtitle_text(data / "subtitle" / f"{vid}.srt") if self.subtitles else None
            out.append(
                Question(
                    id=str(doc["question_id"]),
                    task=str(doc.get("task_type", "")),
                    video=str(video),
                    prompt=self.prompt(doc, subtitle),
                    answer=str(doc["answer"]).strip(),
                    groups={
                        "duration": str(doc["duration"]),
                        "domain": str(doc.get("domain", "")),
                        "sub_category": str(doc.get("sub_category", "")),
                        "task_type": str(doc.get("task_type", "")),
                    },
                )
            )
        return out

    def extract(self, output: str, q: Question) -> str:
        return videomme_letter(output)
