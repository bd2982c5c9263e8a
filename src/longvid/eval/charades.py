"""Charades-STA temporal grounding: the official charades_sta_test.txt ("VIDEO START END##sentence" per
line) or the lmms-eval fork's json ([{video, caption, timestamp: [start, end]}]); videos
Charades_v1_480/<VIDEO>.mp4 (or videos/).

Prompt (pre_prompt + caption + ". " + post_prompt, 50 new tokens): the fork's
lmms-eval_videochat/lmms_eval/tasks/temporal_grounding/{charades.yaml,utils.py}. Timestamp parsing and IoU:
its eval_tvg.py (`extract_time`, `iou`); an output it cannot parse is scored as the segment
[gt_end + 10, gt_end + 20], i.e. IoU 0, as there.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from .base import Benchmark, Question, first_existing, need, read_json

PRE_PROMPT = (
    "Please find the visual event described by a sentence in the video, determining its starting and "
    "ending times. The format should be: 'The event happens in the start time - end time'. For example, "
    "The event 'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the "
    "textual sentence: "
)
POST_PROMPT = "Please return its start time and end time."
KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")
THRESHOLDS = (0.3, 0.5, 0.7)


def _pairs(times: list[float]) -> list[tuple[float, float]]:
    times = times[: len(times) // 2 * 2]
    return [(times[i], times[i + 1]) for i in range(0, len(times), 2)]


def parse_segment(text: str) -> list[float] | None:
    """[start, end] as eval_tvg.py's `extract_time` reads it (its first segment), or None."""
    # as the original: lower-case, drop its example sentence, and turn every "to" (even inside words) into "-"
    text = text.lower().replace("a specific example is : 20.8 - 30.0 seconds", "").replace("to", "-")
    sentences = re.split(r"[!?\n]", text)
    candidates = [s for s in sentences if any(k in s for k in KEYWORDS)]
    stamps = [(float(a), float(b)) for a, b in re.findall(r"(\d+\.*\d*)\s*-\s*(\d+\.*\d*)", text)]
    if not stamps:  # "Starting time: 0.8 seconds ... Ending time: 1.1 seconds"
        found = [re.findall(r"\b(\d+\.\d+\b|\b\d+)\b", s) for s in candidates]
        stamps = _pairs([float(f[0]) for f in found if f])
    if not stamps:  # "starts at 00:00:18 and ends at 00:00:23"
        times = []
        for s in candidates:
            found = re.findall(r"\b((\d{1,2}:\d{2}:\d{2}))\b", s)
            if found:
                h, m, sec = map(int, found[0][0].split(":"))
                times.append(float(h * 3600 + m * 60 + sec))
        stamps = _pairs(times)
    if not stamps:
        return None
    a, b = stamps[0]
    return [a, b] if b > a else [b, a]


def iou(a: list[float], b: list[float]) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    union = max(a[1], b[1]) - min(a[0], b[0])
    return max(inter, 0.0) / union if union > 0 else 0.0


class CharadesSTA(Benchmark):
    name = "charades-sta"
    max_new_tokens = 50
    metric = "miou"

    def _video(self, data: Path, name: str) -> str:
        name = name if Path(name).suffix else f"{name}.mp4"
        return str(first_existing(*[data / d / name for d in ("Charades_v1_480", "videos", ".")]))

    def load(self, data: Path) -> list[Question]:
        txt = sorted(data.glob("charades_sta_test.txt")) or sorted(data.glob("*.txt"))
        out = []
        if txt:
            for i, line in enumerate(txt[0].read_text(encoding="utf-8").splitlines()):
                if not line.strip():
                    continue
                head, _, caption = line.partition("##")
                parts = head.split()
                if len(parts) != 3 or not caption:
                    raise InputError(f"{txt[0]}:{i + 1}: expected 'VIDEO START END##sentence'")
                try:
                    gold = [float(parts[1]), float(parts[2])]
                except ValueError:
                    raise InputError(f"{txt[0]}:{i + 1}: START and END must be seconds") from None
                # the fork's json captions carry no final period; the prompt adds ". " itself
                out.append(self._question(str(i), self._video(data, parts[0]), caption.strip().rstrip("."), gold))
            return out
        js = sorted(data.glob("*.json"))
        if not js:
            raise InputError(f"{data}: no Charades-STA annotation (expected charades_sta_test.txt)")
        items = read_json(js[0])
        if not isinstance(items, list):
            raise InputError(f"{js[0]}: expected a list")
        for i, item in enumerate(items):
            need(item, ("video", "caption", "timestamp"), f"{js[0]}[{i}]")
            out.append(
                self._question(
                    str(i), self._video(data, item["video"]), item["caption"], [float(t) for t in item["timestamp"]]
                )
            )
        return out

    def _question(self, qid: str, video: str, caption: str, gold: list[float]) -> Question:
        return Question(
            id=qid,
            task="charades",
            video=video,
            prompt=f"{PRE_PROMPT}{caption}. {POST_PROMPT}",
            answer=gold,
            groups={"task": "charades"},
        )

    def extract(self, output: str, q: Question) -> list[float] | None:
        return parse_segment(output)

    def score(self, extracted, q: Question) -> float:
        """The IoU with the ground truth (0 for an unparsable output); R@1 at IoU t is the share of rows >= t."""
        return iou(q.answer, extracted) if extracted is not None else 0.0
