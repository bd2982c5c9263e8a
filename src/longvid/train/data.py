"""Training data: LLaVA-style records -> token ids + label masks + pixels -> right-padded micro-batches.

Records come in a JSON list or JSONL file, as in the official repos:

    {"id": "v1", "video": "clips/a.mp4", "start": 3.0, "end": 9.5,
     "conversations": [{"from": "human", "value": "<image>\\nWhat happens?"}, {"from": "gpt", "value": "..."}]}

`image` instead of `video` for a still image, neither for text only. Media paths are relative to the data
root; a video may also be a `.npy` array [T, H, W, 3] (frame rate from an optional `"fps"`, default 1)
or a folder of frames. A malformed record stops the run before it starts, naming its file and line; a
missing or undecodable media file only skips that sample (counted, with a warning).

What the model sees follows the official trainer (`preprocess_multimodal` + `preprocess_qwen`):

* `<image>` moves to the front of its turn followed by a newline; for a video the time message goes
  right after it: "<image>\\nThe video lasts for 12.00 seconds, and 16 frames are uniformly sampled
  from it. \\n{question}";
* each turn is `<|im_start|>{role}\\n{text}<|im_end|>\\n` after the default system turn; system and user
  turns are not supervised, assistant turns are (header included), and every `<|im_start|>`,
  `<|im_end|>` and "\\n" token is supervised wherever it is;
* `<image>` becomes 16 tokens per frame (videos, clips of `mm_local_num_frames` frames) or 64 (images,
  the T=1 path, no anyres tiles), none of them supervised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..prompt import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, time_message, tokenize_with_image
from ..video import open_video, uniform_plan, videochat_flash_plan
from ..vision import SquashProcessor
from .config import DataSpec

try:  # PyAV's decode errors; most are also OSError, but not all of them
    from av.error import FFmpegError as _FFmpegError
except ImportError:  # pragma: no cover
    _FFmpegError = OSError
# What a missing, unreadable or corrupt media file raises: skipped and counted. Anything else is a bug
# (in our code or the config) and fails the run instead of turning every step into a skipped sample.
MEDIA_ERRORS = (InputError, OSError, EOFError, _FFmpegError)

IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# ------------------------------------------------------------------------------------------ records


@dataclass
class Record:
    id: str
    where: str  # "file:line", for messages
    kind: str  # video | image | text
    media: Path | None
    turns: list[tuple[str, str]]  # (user | assistant | system, text)
    start: float | None = None
    end: float | None = None
    fps: float | None = None  # frame rate of .npy arrays and frame folders


def read_records(path: Path, root: Path) -> list[Record]:
    """All records of one JSON / JSONL file, validated; InputError `file:line: problem` on the first bad one."""
    if not path.is_file():
        raise InputError(f"{path}: no such data file")
    return [parse_record(obj, f"{path}:{line}", root) for line, obj in _json_items(path)]


def _json_items(path: Path) -> Iterator[tuple[int, object]]:
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):  # JSONL
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        return
    # a JSON list, decoded item by item to know where each record starts
    decoder = json.JSONDecoder()
    pos, line, seen = text.index("[") + 1, 1, 0

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    while True:
        pos = skip(pos)
        line += text.count("\n", seen, pos)
        seen = pos
        if pos < len(text) and text[pos] == "]":
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        yield line, obj
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif not (pos < len(text) and text[pos] == "]"):
            raise InputError(f"{path}:{line + text.count(chr(10), seen, pos)}: invalid JSON (expected ',' or ']')")


def parse_record(obj: object, where: str, root: Path) -> Record:
    def bad(problem: str) -> InputError:
        return InputError(f"{where}: {problem}")

    if not isinstance(obj, dict):
        raise bad("a record must be a JSON object")
    if "video" in obj and "image" in obj:
        raise bad("a record has a video or an image, not both")
    kind, media = "text", None
    for key in ("video", "image"):
        if key in obj:
            value = obj[key]
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, list):
                raise bad(f"only one {key} per record is supported, got {len(value)}")
            if not isinstance(value, str) or not value:
                raise bad(f'"{key}" must be a path')
            kind, media = key, root / value
    convs = obj.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise bad('"conversations" must be a non-empty list')
    turns = []
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise bad(f'conversations[{i}] must be {{"from": ..., "value": "..."}}')
        role = ROLES.get(str(turn.get("from")))
        if role is None:
            raise bad(f'conversations[{i}] has unknown "from": {turn.get("from")!r} (use human or gpt)')
        turns.append((role, turn["value"]))
    if turns[0][0] != "user":  # the official trainer drops a leading non-human turn
        turns = turns[1:]
    if not any(role == "assistant" for role, _ in turns):
        raise bad("no gpt answer to learn from")
    images = sum(text.count(IMAGE_TOKEN) for _, text in turns)
    if kind != "text" and (images != 1 or any(IMAGE_TOKEN in t for r, t in turns if r != "user")):
        raise bad(f"a {kind} record needs exactly one {IMAGE_TOKEN} in a human turn, found {images}")
    if kind == "text" and images:
        raise bad(f"{IMAGE_TOKEN} in a record without video or image")
    numbers = {}
    for key in ("start", "end", "fps"):
        if obj.get(key) is not None:
            if isinstance(obj[key], bool) or not isinstance(obj[key], (int, float)) or obj[key] < 0:
                raise bad(
                    f'"{key}" must be a non-negative number of seconds' if key != "fps" else '"fps" must be positive'
                )
            numbers[key] = float(obj[key])
    if numbers.get("fps") == 0:
        raise bad('"fps" must be positive')
    if "start" in numbers and "end" in numbers and numbers["end"] <= numbers["start"]:
        raise bad('"end" must be after "start"')
    return Record(
        str(obj.get("id", where)),
        where,
        kind,
        media,
        turns,
        numbers.get("start"),
        numbers.get("end"),
        numbers.get("fps"),
    )


def with_image_first(text: str, msg: str = "", chat: bool = False) -> str:
    """The official `preprocess_multimodal`: `<image>` first, then a newline, then the time message
    (which leaves "... from it. \n{question}"); with `chat`, the inference string of `chat()` instead:
    "<image>\n{time message} {question}"."""
    if IMAGE_TOKEN not in text:
        return text
    if not text.startswith(IMAGE_TOKEN):
        text = (IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()).strip()
    if chat and msg.strip():
        return f"{IMAGE_TOKEN}\n{msg.strip()} {text[len(IMAGE_TOKEN) :].lstrip()}"
    if msg.rstrip():
        text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN + msg.rstrip() + " ")
    return text


# ------------------------------------------------------------------------------------------ tokens + labels


class ChatEncoder:
    """Token ids and labels of a conversation, masked as the official `preprocess_qwen` does (ChatML),
    or as `preprocess_plain` does (template "plain": "<image>" + answer + "\\n", only the answer learned)."""

    def __init__(self, tokenizer, system: str, template: str = "qwen", labels: str = "official"):
        self.tokenizer = tokenizer
        self.system = system
        self.template = template
        self.labels = labels  # official, or answers: only what the assistant says (+ its <|im_end|>)
        ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")]
        newline = tokenizer("\n", add_special_tokens=False).input_ids
        if any(not isinstance(i, int) or i < 0 for i in ids) or len(newline) != 1:
            raise InputError("the tokenizer lacks the ChatML tokens <|im_start|> / <|im_end|> or a newline token")
        self.always_supervised = {*ids, newline[0]}  # the official list [198, im_start, im_end]
        self.assistant_header = len(tokenize_with_image(tokenizer, "<|im_start|>assistant\n"))

    def check(self, rec: Record) -> None:
        if self.template == "plain" and (rec.kind == "text" or len(rec.turns) != 2):
            raise InputError(f"{rec.where}: the plain template needs one human turn with {IMAGE_TOKEN} and one answer")

    def encode(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        if self.template == "plain":  # the caption alone: no system turn, no question, no time message
            answer = self.tokenizer(turns[1][1] + "\n", add_special_tokens=False).input_ids
            return [IMAGE_TOKEN_INDEX, *answer], [IGNORE_INDEX, *answer]
        ids: list[int] = []
        labels: list[int] = []
        for role, text in [("system", self.system), *turns]:
            piece = tokenize_with_image(self.tokenizer, f"<|im_start|>{role}\n{text}<|im_end|>\n")
            ids += piece
            if role != "assistant":
                labels += [IGNORE_INDEX] * len(piece)
            elif self.labels == "answers":  # header "<|im_start|>assistant\n" and the final "\n" not learned
                header = self.assistant_header
                labels += [IGNORE_INDEX] * header + piece[header:-1] + [IGNORE_INDEX]
            else:
                labels += piece
        if self.labels == "answers":
            return ids, labels
        labels = [i if i in self.always_supervised else lab for i, lab in zip(ids, labels)]
        return ids, labels


# ------------------------------------------------------------------------------------------ samples


@dataclass
class Sample:
    ids: list[int]  # with one IMAGE_TOKEN_INDEX for video / image samples
    labels: list[int]
    kind: str
    pixels: torch.Tensor | None  # [N, 3, S, S] (video: N a multiple of the clip length; image: N = 1)
    num_visual: int


@dataclass
class VisualLayout:
    """How the model turns a sample's pixels into tokens (read from the model config)."""

    image_size: int
    frames_per_clip: int
    tokens_per_frame: int = 16
    tokens_per_image: int = 64


class TrainDataset:
    """Loads record i as a `Sample` (decode, sample frames, squash, tokenize), or a skip reason."""

    def __init__(self, records: list[Record], tokenizer, spec: DataSpec, layout: VisualLayout, max_length: int):
        self.records = records
        self.spec = spec
        self.layout = layout
        self.max_length = max_length
        self.encoder = ChatEncoder(tokenizer, spec.system, spec.template, spec.labels)
        self.processor = SquashProcessor(layout.image_size)
        for rec in records:
            self.encoder.check(rec)

    def __len__(self) -> int:
        return len(self.records)

    def length(self, i: int) -> int:
        """A rough token count, known without decoding anything (for length-grouped batches)."""
        rec = self.records[i]
        words = sum(len(text.split()) for _, text in rec.turns)
        if rec.kind == "video":
            return words + self.layout.tokens_per_frame * self.spec.frames_upbound
        return words + (self.layout.tokens_per_image if rec.kind == "image" else 0)

    def load(self, i: int) -> Sample | str:
        rec = self.records[i]
        turns, pixels, num_visual = rec.turns, None, 0
        try:
            if rec.kind == "video":
                pixels, msg = self._video(rec)
                num_visual = self.layout.tokens_per_frame * pixels.shape[0]
                chat = self.spec.time_message == "chat"
                turns = [(r, with_image_first(t, msg if self.spec.time_message else "", chat)) for r, t in turns]
            elif rec.kind == "image":
                video = open_video(rec.media)
                try:
                    pixels = self.processor(video.read([0]))
                finally:
                    video.close()
                num_visual = self.layout.tokens_per_image
                turns = [(r, with_image_first(t)) for r, t in turns]
        except MEDIA_ERRORS as e:  # a bad media file must never stop a long run: skip it (a bug of ours does)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"{rec.where} ({rec.id}): {reason}"
        ids, labels = self.encoder.encode(turns)
        return self._fit(rec, Sample(ids, labels, rec.kind, pixels, num_visual))

    def _video(self, rec: Record) -> tuple[torch.Tensor, str]:
        from ..video import trim

        video = open_video(rec.media, fps=rec.fps)
        try:
            first, count = trim(video, rec.start, rec.end)
            k = self.layout.frames_per_clip
            if self.spec.sample == "middle":
                plan = uniform_plan(count, video.fps, self.spec.frames_upbound, first)
            elif self.spec.sample == "all":  # every frame of pre-sampled videos (uniform beyond the bound)
                plan = uniform_plan(count, video.fps, min(count, self.spec.frames_upbound), first)
            else:
                plan = videochat_flash_plan(
                    count, video.fps, self.spec.frames_upbound, self.spec.frames_lowbound, multiple=k, first_index=first
                )
            plan = plan.padded_to_multiple(k)
            pixels = self.processor(video.read(plan.indices))
        finally:
            video.close()
        return pixels, time_message(plan.duration, len(plan))

    def _fit(self, rec: Record, s: Sample) -> Sample | str:
        """Cut the text tail beyond max_length (as the official trainer does); skip if visual tokens would go."""
        total = len(s.ids) + (s.num_visual - 1 if s.pixels is not None else 0)
        excess = total - self.max_length
        if excess > 0:
            tail = len(s.ids) - 1 - s.ids.index(IMAGE_TOKEN_INDEX) if s.pixels is not None else len(s.ids) - 1
            if excess > tail:
                return f"{rec.where} ({rec.id}): {total} tokens do not fit max_length {self.max_length}"
            s.ids, s.labels = s.ids[:-excess], s.labels[:-excess]
        if all(lab == IGNORE_INDEX for lab in s.labels[1:]):
            return f"{rec.where} ({rec.id}): nothing left to supervise within max_length {self.max_length}"
        return s


# ------------------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """A right-padded micro-batch. Padding needs no attention mask: the decoder is causal and padded
    positions come last; their labels are ignored."""

    tokens: torch.Tensor  # [B, L] token ids; visual slots and padding hold the pad id
    labels: torch.Tensor  # [B, L] IGNORE_INDEX where not supervised
    visual_mask: torch.Tensor  # [B, L] True at the slots the visual tokens fill
    clips: torch.Tensor | None  # [n_clips, T, 3, S, S], all videos of the batch
    images: torch.Tensor | None  # [n_images, 1, 3, S, S]
    order: list[tuple[str, int, int]]  # per visual sample in batch order: (video | image, first row, rows)
    num_samples: int
    skipped: list[str] = field(default_factory=list)

    @property
    def num_targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def model_inputs(self, device) -> dict:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return {
            "tokens": move(self.tokens),
            "labels": move(self.labels),
            "visual_mask": move(self.visual_mask),
            "clips": move(self.clips),
            "images": move(self.images),
            "order": self.order,
        }


def collate(samples: list[Sample], skipped: list[str], pad_id: int, frames_per_clip: int) -> Batch:
    rows: list[tuple[list[int], list[int], list[bool]]] = []
    clips, images, order = [], [], []
    n_clips = 0
    for s in samples:
        if s.pixels is None:
            rows.append((s.ids, s.labels, [False] * len(s.ids)))
            continue
        k = s.ids.index(IMAGE_TOKEN_INDEX)
        rest = len(s.ids) - k - 1
        rows.append(
            (
                s.ids[:k] + [pad_id] * s.num_visual + s.ids[k + 1 :],
                s.labels[:k] + [IGNORE_INDEX] * s.num_visual + s.labels[k + 1 :],
                [False] * k + [True] * s.num_visual + [False] * rest,
            )
        )
        if s.kind == "video":
            c = s.pixels.reshape(-1, frames_per_clip, *s.pixels.shape[1:])
            order.append(("video", n_clips, c.shape[0]))
            clips.append(c)
            n_clips += c.shape[0]
        else:
            order.append(("image", len(images), 1))
            images.append(s.pixels[:, None])
    if not rows:  # every sample was skipped: one empty row keeps all processes in step
        rows.append(([pad_id], [IGNORE_INDEX], [False]))
    length = max(len(r[0]) for r in rows)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for b, (ids, labs, vis) in enumerate(rows):
        tokens[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(labs)] = torch.tensor(labs)
        mask[b, : len(vis)] = torch.tensor(vis)
    return Batch(
        tokens,
        labels,
        mask,
        torch.cat(clips) if clips else None,
        torch.cat(images) if images else None,
        order,
        len(samples),
        list(skipped),
    )


class GlobalBatches:
    """Which samples make up each optimizer step, and how they split into micro-batches per process.

    The order depends only on the seed and the epoch, never on the number of processes: a global batch
    is cut into micro-batches of similar length (sorted), and micro-batch j goes to process j % world.
    With `group_by_length`, a shuffled window of several global batches is sorted by length first, so
    batches hold similar lengths (less padding); the batches themselves are then shuffled.
    """

    GROUP_WINDOW = 8  # global batches sorted together

    def __init__(self, lengths: list[int], global_batch: int, micro_batch: int, seed: int, group_by_length: bool):
        if len(lengths) < global_batch:
            raise InputError(f"the data has {len(lengths)} usable records, fewer than global_batch_size {global_batch}")
        self.lengths = np.asarray(lengths)
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.seed = seed
        self.group = group_by_length
        self.steps_per_epoch = len(lengths) // global_batch
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.lengths))[: self.steps_per_epoch * self.global_batch]
            if self.group:
                window = self.global_batch * self.GROUP_WINDOW
                chunks = [order[i : i + window] for i in range(0, len(order), window)]
                order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
            batches = [order[i : i + self.global_batch] for i in range(0, len(order), self.global_batch)]
            if self.group:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def global_batch_at(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.steps_per_epoch)
        return [int(x) for x in self._batches(epoch)[i]]

    def micro_batches(self, step: int, rank: int, world: int) -> list[list[int]]:
        batch = self.global_batch_at(step)
        batch = sorted(batch, key=lambda i: (-int(self.lengths[i]), i))
        micro = [batch[i : i + self.micro_batch] for i in range(0, len(batch), self.micro_batch)]
        return micro[rank::world]


class MicroBatches(torch.utils.data.Dataset):
    """Item k = the k-th micro-batch this process trains on from `start_step`, loaded and collated
    (in DataLoader workers when there are any)."""

    def __init__(
        self,
        dataset: TrainDataset,
        schedule: GlobalBatches,
        rank: int,
        world: int,
        start_step: int,
        end_step: int,
        pad_id: int,
    ):
        self.dataset = dataset
        self.schedule = schedule
        self.rank, self.world = rank, world
        self.start, self.end = start_step, end_step
        self.accum = schedule.global_batch // (schedule.micro_batch * world)
        self.pad_id = pad_id

    def __len__(self) -> int:
        return (self.end - self.start) * self.accum

    def __getitem__(self, k: int) -> Batch:
        step, j = divmod(k, self.accum)
        indices = self.schedule.micro_batches(self.start + step, self.rank, self.world)[j]
        samples, skipped = [], []
        for i in indices:
            loaded = self.dataset.load(i)
            (skipped if isinstance(loaded, str) else samples).append(loaded)
        return collate(samples, skipped, self.pad_id, self.dataset.layout.frames_per_clip)


def unbatched(batch):
    """DataLoader collate_fn for datasets that already return whole batches."""
    return batch
