"""The synthetic needle-in-a-haystack task family: haystacks, needle cards, questions, training records.

Everything is procedural and deterministic by seed:

* haystack: scenes of 8-40 frames (scene cuts), each a textured background (gradient, stripes,
  checker or blobs in muted colours) with small shapes drifting across it;
* needle card: a light card with a dark border and one large coloured shape (8 shapes x 8 colours);
  a multi-hop card also carries a small white icon in its top-left corner naming the *next* card's
  shape (the instruction), the final card carries none;
* questions in the official NIAH wording ("Find the frame of ... Options: (A) ... Only give the best
  option. Best option: ("), answered by one letter; options are shuffled.

A quarter of the shape x colour combinations never appear in training data (`split="test"`), so an
evaluation needle can be one the model has never seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 30),
    "cyan": (40, 205, 215),
    "pink": (245, 125, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "bar")
# the shape each is most often taken for (a linear probe on the tower's tokens, and the model's own mistakes)
LOOKALIKES = {
    "circle": "ring",
    "ring": "circle",
    "star": "cross",
    "cross": "star",
    "square": "diamond",
    "diamond": "square",
    "triangle": "bar",
    "bar": "triangle",
}
LETTERS = "ABCD"
OPTION_MARKERS = tuple(f"({letter})" for letter in LETTERS)  # whole tokens in the tiny model's tokenizer
CARD = (238, 236, 226)
BORDER = (25, 25, 30)


# ------------------------------------------------------------------------------------------- drawing


def shape_mask(shape: str, size: int, scale: float = 1.0) -> np.ndarray:
    """A boolean [size, size] mask of `shape` centred in the square (scale 1 = fills ~80%)."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    x, y = (xx - c) / (size * 0.4 * scale), (yy - c) / (size * 0.4 * scale)
    r = np.hypot(x, y)
    if shape == "circle":
        return r <= 1
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "square":
        return (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.1
    if shape == "triangle":
        return (y <= 0.8) & (y >= -0.9 + 1.9 * np.abs(x))
    if shape == "cross":
        return ((np.abs(x) <= 0.3) & (np.abs(y) <= 1)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 1))
    if shape == "bar":
        return (np.abs(x) <= 1) & (np.abs(y) <= 0.35)
    if shape == "star":
        theta = np.arctan2(y, x)
        return r <= 0.5 + 0.5 * np.abs(np.cos(2.5 * theta))
    raise ValueError(f"unknown shape {shape!r}")


def blob_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob (three overlapping ellipses) that is none of the eight shapes."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    mask = np.zeros((size, size), bool)
    for _ in range(3):
        cx, cy, rx, ry = *rng.uniform(0.35, 0.65, 2), *rng.uniform(0.12, 0.3, 2)
        mask |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    return mask


@dataclass(frozen=True)
class Needle:
    shape: str
    colour: str
    pointer: str | None = None  # multi-hop: the shape of the card to look for next

    @property
    def caption(self) -> str:
        return article(f"{self.colour} {self.shape}")


def article(noun_phrase: str) -> str:
    return f"{'an' if noun_phrase[0] in 'aeiou' else 'a'} {noun_phrase}"


def needle_card(
    needle: Needle, size: int = 64, seed: int = 0, rgb: tuple[int, int, int] | None = None, jitter: float = 0.0
) -> np.ndarray:
    """The needle image: a bordered light card, a big coloured shape, an optional instruction icon.
    `rgb` paints the shape in another colour than its named one (vision pre-training); `jitter` (training
    only) shifts each channel of the named colour by up to that much and the shape's size by up to 12%, so
    that no card looks exactly like another and memorising the training pairs is no shortcut."""
    rng = np.random.default_rng(seed)
    if jitter and rgb is None:
        shifted = np.array(COLOURS[needle.colour]) + rng.uniform(-jitter, jitter, 3)
        rgb = tuple(int(v) for v in np.clip(shifted, 0, 255))
    frame = np.empty((size, size, 3), np.uint8)
    frame[:] = CARD
    b = max(2, size // 20)
    frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = BORDER, BORDER, BORDER, BORDER
    inner = int(size * 0.62)
    off = (
        (size - inner) // 2 + int(rng.integers(-size // 16, size // 16 + 1)),
        (size - inner) // 2 + int(rng.integers(-size // 16, size // 16 + 1)),
    )
    if needle.shape == "blob":
        mask = blob_mask(inner, rng)
    else:
        mask = shape_mask(needle.shape, inner, float(rng.uniform(0.88, 1.12)) if jitter else 1.0)
    frame[off[0] : off[0] + inner, off[1] : off[1] + inner][mask] = rgb if rgb is not None else COLOURS[needle.colour]
    if needle.pointer is not None:
        icon = int(size * 0.28)
        frame[b : b + icon, b : b + icon] = BORDER
        frame[b : b + icon, b : b + icon][shape_mask(needle.pointer, icon, 0.9)] = (255, 255, 255)
    return frame


def _texture(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b = rng.uniform(30, 150, 3), rng.uniform(30, 150, 3)
    if kind == 0:  # gradient
        angle = rng.uniform(0, np.pi)
        t = np.clip(np.cos(angle) * xx + np.sin(angle) * yy, 0, 1)[..., None]
    elif kind == 1:  # stripes
        f, angle = rng.uniform(3, 9), rng.uniform(0, np.pi)
        t = (0.5 + 0.5 * np.sin(2 * np.pi * f * (np.cos(angle) * xx + np.sin(angle) * yy)))[..., None]
    elif kind == 2:  # checker
        n = int(rng.integers(3, 9))
        t = (((xx * n).astype(int) + (yy * n).astype(int)) % 2).astype(np.float32)[..., None]
    else:  # smooth blobs
        t = np.zeros((size, size), np.float32)
        for _ in range(4):
            cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            t += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        t = (t / t.max())[..., None]
    return (a * (1 - t) + b * t).astype(np.float32)


def haystack(num_frames: int, size: int = 64, seed: int = 0) -> Iterator[np.ndarray]:
    """Haystack frames (one per second): scenes with cuts, textures and small drifting shapes."""
    rng = np.random.default_rng(seed)
    frame_idx = 0
    while frame_idx < num_frames:
        length = int(rng.integers(8, 41))
        background = _texture(int(rng.integers(0, 4)), size, rng)
        movers = []
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(size // 10, size // 5))
            colour = np.array(list(COLOURS.values())[int(rng.integers(0, len(COLOURS)))]) * rng.uniform(0.5, 0.8)
            movers.append(
                (
                    shape_mask(SHAPES[int(rng.integers(0, len(SHAPES)))], s),
                    colour,
                    rng.uniform(0, size - s, 2),
                    rng.uniform(-3, 3, 2),
                )
            )
        for t in range(min(length, num_frames - frame_idx)):
            frame = background + rng.normal(0, 4, background.shape).astype(np.float32)
            for mask, colour, pos, vel in movers:
                s = mask.shape[0]
                y, x = (np.abs((pos + vel * t) % (2 * (size - s))) - (size - s)).__abs__().astype(int)
                region = frame[y : y + s, x : x + s]
                region[mask] = colour
            yield np.clip(frame, 0, 255).astype(np.uint8)
            frame_idx += 1


# ------------------------------------------------------------------------------------------- needles


def combos(split: str = "train") -> list[tuple[str, str]]:
    """Shape x colour pairs; every 4th pair (diagonally spread) is held out of training."""
    out = []
    for i, shape in enumerate(SHAPES):
        for j, colour in enumerate(COLOURS):
            held_out = (i + 2 * j) % 4 == 0
            if split == "all" or held_out == (split == "test"):
                out.append((shape, colour))
    return out


def _options(
    correct: str, pool: list[str], rng: np.random.Generator, include: str | None = None
) -> tuple[list[str], str]:
    """`correct` and three wrong options from `pool` (one of them `include` when given), shuffled."""
    others = [p for p in pool if p not in (correct, include)]
    picks = [correct] + ([include] if include else [])
    picks += [others[i] for i in rng.choice(len(others), 4 - len(picks), replace=False)]
    order = rng.permutation(4)
    options = [picks[i] for i in order]
    return options, LETTERS[options.index(correct)]


def _format(prefix: str, options: list[str]) -> str:
    lines = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{prefix}\nOptions: {lines}\nOnly give the best option. Best option: ("


@dataclass
class NeedleQuestion:
    question: str
    answer: str  # a letter
    kind: str


def _partners(attribute: str, value: str, split: str) -> list[str]:
    """The values of the other attribute that occur with `value` in `split` (all of them for "all"/"test")."""
    if split != "train":
        return list(COLOURS) if attribute == "shape" else list(SHAPES)
    if attribute == "shape":
        return [c for s, c in combos("train") if s == value]
    return [s for s, c in combos("train") if c == value]


def single_hop_question(needle: Needle, rng: np.random.Generator, split: str = "all") -> NeedleQuestion:
    """Locate by one attribute, ask the other (official wording).

    With `split="train"` the wrong options are drawn only from values that do occur with the located
    attribute in training: otherwise "the star is never cyan in training" would be a cue worth learning,
    one that answers every held-out needle wrongly."""
    if rng.random() < 0.5:
        options, letter = _options(needle.colour, _partners("shape", needle.shape, split), rng)
        return NeedleQuestion(
            _format(f"Find the frame of {article(needle.shape)}. What is the color of the {needle.shape}?", options),
            letter,
            "color",
        )
    options, letter = _options(needle.shape, _partners("colour", needle.colour, split), rng)
    return NeedleQuestion(
        _format(
            f"Find the frame of {article(needle.colour)} card. What shape is on the {needle.colour} card?", options
        ),
        letter,
        "shape",
    )


def open_question(needle: Needle, rng: np.random.Generator) -> NeedleQuestion:
    """The same facts answered in words ("It is red."): a dense signal for learning to read the cards, in
    the very tokens the options use (" red", " star")."""
    if rng.random() < 0.5:
        return NeedleQuestion(
            f"Find the frame of {article(needle.shape)}. What is the color of the {needle.shape}?",
            f"It is {needle.colour}.",
            "color-word",
        )
    return NeedleQuestion(
        f"Find the frame of {article(needle.colour)} card. What shape is on the {needle.colour} card?",
        f"It is {article(needle.shape)}.",
        "shape-word",
    )


def lookup_question(needle: Needle, rng: np.random.Generator, split: str = "all") -> NeedleQuestion:
    """Training only: the answer given, only its letter asked. Matching a word to its option is the last step
    of every letter question; learned alone it forms in a few hundred steps instead of after a long plateau."""
    attribute = "colour" if rng.random() < 0.5 else "shape"
    value, other = (needle.colour, needle.shape) if attribute == "colour" else (needle.shape, needle.colour)
    options, letter = _options(value, _partners("shape" if attribute == "colour" else "colour", other, split), rng)
    return NeedleQuestion(_format(f"The answer is {value}.", options), letter, "lookup")


def neutral_sample(
    rng: np.random.Generator,
    size: int = 64,
    jitter: float = 0.0,
    letters: float = 0.0,
    lookalike: float = 0.0,
    near: float = 0.0,
) -> tuple[np.ndarray, NeedleQuestion]:
    """Training only: a card that shows one attribute alone, asked without naming the other one: one of the
    eight shapes in an unnamed colour (`pretraining_colour`), or a shapeless blob in a named colour.

    Words asked about named pairs ("What shape is on the red card?" -> "It is a star.") teach that a red card
    never holds the shapes red is held out with, and that answers every held-out needle wrongly; on these
    cards each attribute is read with nothing else to lean on. A fraction `letters` is asked by letter, with
    wrong options from every shape (colour): on named cards training can never offer a circle for a blue card,
    so a held-out blue circle met "circle" and "ring" side by side for the first time (and said ring in 3 of 8
    where the words said circle in 8 of 8). A fraction `lookalike` of the shapes asked by letter has the
    shape's look-alike among the wrong options (a circle is then always offered with a ring): the only
    mistakes left on held-out cards were circle <-> ring, the pair that colour tells apart in training
    (every colour shows exactly one of the two), so the difference has to be learned where it is allowed.
    A fraction `near` of the shapes is painted just outside the named colours' reach (`near_colour`) instead of
    anywhere far from them: in training the named colours' neighbourhoods tell circle from ring by colour alone,
    and unnamed cards far away from them leave that rule standing where the held-out needles are."""
    by_letter = letters > 0 and rng.random() < letters  # no draw at 0: earlier stages' data stay as they were
    if rng.random() < 0.5:
        shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
        rgb = near_colour(rng) if near > 0 and rng.random() < near else pretraining_colour(rng)
        card = needle_card(Needle(shape, "red"), size, int(rng.integers(0, 2**31)), rgb=rgb)
        prefix = "Find the frame of a card. What shape is on the card?"
        if by_letter:
            twin = LOOKALIKES[shape] if lookalike > 0 and rng.random() < lookalike else None
            options, letter = _options(shape, list(SHAPES), rng, include=twin)
            return card, NeedleQuestion(_format(prefix, options), letter, "shape")
        return card, NeedleQuestion(prefix, f"It is {article(shape)}.", "shape-word")
    colour = list(COLOURS)[int(rng.integers(0, len(COLOURS)))]
    card = needle_card(Needle("blob", colour), size, int(rng.integers(0, 2**31)), jitter=jitter)
    prefix = "Find the frame of a card. What is the color of the shape?"
    if by_letter:
        options, letter = _options(colour, list(COLOURS), rng)
        return card, NeedleQuestion(_format(prefix, options), letter, "color")
    return card, NeedleQuestion(prefix, f"It is {colour}.", "color-word")


@dataclass
class Chain:
    """A multi-hop chain: `cards[0]` is the entry, each card's pointer names the next one's shape."""

    cards: list[Needle]  # in chain order; the last has no pointer
    questions: list[NeedleQuestion]


def multi_hop_chain(hops: int, rng: np.random.Generator, split: str = "train") -> Chain:
    """`hops` cards with distinct shapes; Q1 asks the final card's caption, Q2 its colour (official pair)."""
    pool = combos(split)
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:hops]]
    cards = []
    for k, shape in enumerate(shapes):
        colours = [c for s, c in pool if s == shape] or list(COLOURS)
        colour = colours[int(rng.integers(0, len(colours)))]
        cards.append(Needle(shape, colour, shapes[k + 1] if k + 1 < hops else None))
    final = cards[-1]
    entry = (
        f"Find the frame of {article(cards[0].shape)}. Locate the final frame based on the instructions in the "
        "image, and"
    )
    # training draws wrong options only from what training shows (see `single_hop_question`)
    captions = [article(f"{c} {s}") for s, c in combos("train" if split == "train" else "all")]
    o1, a1 = _options(final.caption, captions, rng)
    o2, a2 = _options(final.colour, _partners("shape", final.shape, split), rng)
    return Chain(
        cards,
        [
            NeedleQuestion(_format(f"{entry} choose the captions that best describe the frame:", o1), a1, "caption"),
            NeedleQuestion(
                _format(
                    f"{entry} answer the following question based on the final frame: what is the color "
                    f"of the {final.shape}",
                    o2,
                ),
                a2,
                "color",
            ),
        ],
    )


def pointer_question(card: Needle) -> NeedleQuestion:
    """Training only: one hop of a chain alone, in words. A chain question hides three lookups behind one
    letter; this asks the first of them (which shape the card's icon names) directly."""
    assert card.pointer is not None
    return NeedleQuestion(
        f"Find the frame of {article(card.shape)}. What shape is the icon on it?",
        f"It is {article(card.pointer)}.",
        "pointer-word",
    )


def random_needle(rng: np.random.Generator, split: str = "train") -> Needle:
    pool = combos(split)
    shape, colour = pool[int(rng.integers(0, len(pool)))]
    return Needle(shape, colour)


def corpus(samples: int = 3000, seed: int = 0) -> list[str]:
    """Text of the task family (questions, options, answers, time messages): a tokenizer trained on it
    keeps words and option markers such as "(A)" whole, so short prompts and easy letter binding."""
    from ..prompt import time_message

    rng = np.random.default_rng(seed)
    lines = [CORPUS_PREFIX] * 50
    for _ in range(samples):
        needle = random_needle(rng, "all")
        lines.append(single_hop_question(needle, rng).question)
        lines.append(open_question(needle, rng).question)
        lines.append(multi_hop_chain(3, rng, "all").questions[int(rng.integers(0, 2))].question)
        lines.append(time_message(float(rng.integers(1, 5000)), int(rng.integers(1, 5000))))
        lines.append(f"The video shows {needle.caption}, then {random_needle(rng, 'all').caption}.")
    return lines


CORPUS_PREFIX = "system\nYou are a helpful assistant.\nuser\nassistant\nIt is a star. It is red. Best option: ( A B C D"


# ------------------------------------------------------------------------------------------- seeing

ATTRIBUTES = {"card": 2, "shape": len(SHAPES), "pointer": len(SHAPES) + 1}  # classes; pointer class 8 = no icon
COLOUR_TARGETS = 3  # and the shape's RGB, regressed, so that seeing shapes does not forget colours


def pretraining_colour(rng: np.random.Generator, radius: float = 48.0) -> tuple[int, int, int]:
    """A shape colour for vision pre-training: uniform in RGB, distinct from the card, and at least `radius`
    away from all eight named colours. So colour says nothing about shape (a colour kept away only from
    held-out pairs would itself be a cue), and no needle the model is asked about, held out or not, is
    ever seen in pre-training."""
    while True:
        rgb = rng.integers(0, 256, 3)
        if _unnamed(rgb, radius):
            return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _unnamed(rgb: np.ndarray, radius: float) -> bool:
    """Distinct from the card and more than `radius` away from every named colour."""
    named = np.array(list(COLOURS.values()))
    return bool(np.abs(rgb - np.array(CARD)).sum() > 60 and np.linalg.norm(named - rgb, axis=1).min() > radius)


def near_colour(rng: np.random.Generator, radius: float = 48.0, width: float = 24.0) -> tuple[int, int, int]:
    """A colour `radius` to `radius + width` away from a random named colour and at least `radius` from all of
    them: as far from every needle as `pretraining_colour`, but next to one."""
    named = np.array(list(COLOURS.values()))
    while True:
        direction = rng.normal(size=3)
        centre = named[int(rng.integers(0, len(named)))]
        rgb = np.round(centre + direction / np.linalg.norm(direction) * rng.uniform(radius, radius + width))
        if 0 <= rgb.min() and rgb.max() <= 255 and _unnamed(rgb, radius):
            return int(rgb[0]), int(rgb[1]), int(rgb[2])


def attribute_clip(
    frames: int,
    rng: np.random.Generator,
    hay: np.ndarray,
    size: int = 64,
    card_ratio: float = 0.75,
    pointer_ratio: float = 0.5,
    colour_radius: float = 48.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A clip for vision pre-training: each frame a haystack frame (drawn from `hay`) or a card with a random
    shape, a random colour (`pretraining_colour`) and, for `pointer_ratio` of them, an instruction icon.
    Returns (uint8 [frames, size, size, 3], int64 labels [frames, 6]: card 0/1, shape, pointer, and the
    shape's R, G, B; -100 where a haystack frame has none of these)."""
    images, labels = [], []
    for _ in range(frames):
        if rng.random() >= card_ratio:
            images.append(hay[int(rng.integers(0, len(hay)))])
            labels.append((0, -100, -100, -100, -100, -100))
            continue
        shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
        pointer = SHAPES[int(rng.integers(0, len(SHAPES)))] if rng.random() < pointer_ratio else None
        pointer = pointer if pointer != shape else None
        colour = pretraining_colour(rng, colour_radius)
        images.append(needle_card(Needle(shape, "red", pointer), size, int(rng.integers(0, 2**31)), rgb=colour))
        labels.append((1, SHAPES.index(shape), len(SHAPES) if pointer is None else SHAPES.index(pointer), *colour))
    return np.stack(images), np.array(labels, dtype=np.int64)


# ------------------------------------------------------------------------------------------- videos


def insert(frames: list[np.ndarray], needle_frames: list[list[np.ndarray]], positions: list[int]) -> list[np.ndarray]:
    """Insert each needle's frames before haystack frame `positions[i]` (positions in haystack indices)."""
    out: list[np.ndarray] = []
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    cursor = 0
    for i in order:
        out.extend(frames[cursor : positions[i]])
        out.extend(needle_frames[i])
        cursor = positions[i]
    out.extend(frames[cursor:])
    return out


def training_sample(
    num_frames: int,
    rng: np.random.Generator,
    size: int = 64,
    hops: int = 1,
    split: str = "train",
    distractors: int = 0,
    turns: int = 1,
    open_ratio: float = 0.0,
    jitter: float = 0.0,
    neutral: float = 0.0,
    pointer: float = 0.0,
    neutral_letters: float = 0.0,
    lookalike: float = 0.0,
    near: float = 0.0,
) -> tuple[np.ndarray, list[NeedleQuestion]]:
    """A haystack of `num_frames` frames with one needle (or a chain of `hops` cards) at random places,
    plus up to `distractors` other cards (other shapes and colours).

    Single-hop samples get `turns` questions (1 to `turns`), each about one of the cards, a fraction
    `open_ratio` of them answered in one word instead of a letter. A chain gets its two questions in random
    order (the second is nearly free once the first is answered, so each must come first as often), and
    for a fraction `pointer` of chains a last one reading a card's icon (`pointer_question`)."""
    hay = list(haystack(num_frames, size, int(rng.integers(0, 2**31))))
    repeat = int(rng.integers(1, 5))  # a needle lasts 1-4 frames: inside a clip or filling one
    if hops <= 1 and rng.random() < neutral:
        card, question = neutral_sample(rng, size, jitter, neutral_letters, lookalike, near)
        return np.stack(insert(hay, [[card] * repeat], [int(rng.integers(0, num_frames + 1))])), [question]
    if hops <= 1:
        cards = [random_needle(rng, split)]
    else:
        chain = multi_hop_chain(hops, rng, split)
        cards, questions = list(chain.cards), [chain.questions[i] for i in rng.permutation(len(chain.questions))]
    used_shapes, used_colours = {c.shape for c in cards}, {c.colour for c in cards}
    for _ in range(int(rng.integers(0, distractors + 1))):
        free = [(s, c) for s, c in combos(split) if s not in used_shapes and c not in used_colours]
        if not free:
            break
        shape, colour = free[int(rng.integers(0, len(free)))]
        icon = SHAPES[int(rng.integers(0, len(SHAPES)))] if hops > 1 else None
        cards.append(Needle(shape, colour, icon if icon != shape else None))
        used_shapes.add(shape)
        used_colours.add(colour)
    if hops <= 1:
        questions = []
        for _ in range(int(rng.integers(1, turns + 1))):
            card = cards[int(rng.integers(0, len(cards)))]
            if rng.random() < open_ratio:
                questions.append(open_question(card, rng))
            else:
                questions.append(single_hop_question(card, rng, split))
    elif rng.random() < pointer:
        with_icon = [c for c in cards if c.pointer is not None]
        questions.append(pointer_question(with_icon[int(rng.integers(0, len(with_icon)))]))
    card_frames = [[needle_card(c, size, int(rng.integers(0, 2**31)), jitter=jitter)] * repeat for c in cards]
    positions = [int(p) for p in rng.integers(0, num_frames + 1, len(cards))]
    return np.stack(insert(hay, card_frames, positions)), questions


def text_sample(
    rng: np.random.Generator,
    split: str = "train",
    turns: int = 1,
    open_ratio: float = 0.0,
    others: int = 2,
    lookup: float = 0.0,
) -> tuple[str, list[NeedleQuestion]]:
    """The cards described in words instead of shown (a cheap warm-up for answering by letter), with up to
    `others` more cards; a fraction `lookup` of the questions give the answer and ask only its letter."""
    cards = [random_needle(rng, split)]
    for _ in range(int(rng.integers(0, others + 1))):
        shape, colour = random_needle(rng, split).shape, random_needle(rng, split).colour
        if (shape, colour) in combos(split) and all(shape != c.shape and colour != c.colour for c in cards):
            cards.append(Needle(shape, colour))
    order = rng.permutation(len(cards))
    context = "The video shows " + ", then ".join(cards[i].caption for i in order) + "."
    questions = []
    for _ in range(int(rng.integers(1, turns + 1))):
        card = cards[int(rng.integers(0, len(cards)))]
        if rng.random() < lookup:
            questions.append(lookup_question(card, rng, split))
        elif rng.random() < open_ratio:
            questions.append(open_question(card, rng))
        else:
            questions.append(single_hop_question(card, rng, split))
    return context, questions


def write_training_set(
    folder: str | Path,
    samples: int,
    frames: tuple[int, int],
    seed: int = 0,
    size: int = 64,
    hops: tuple[int, ...] = (1,),
    split: str = "train",
    distractors: int = 2,
    turns: int = 1,
    open_ratio: float = 0.0,
    text: float = 0.0,
    lookup: float = 0.0,
    jitter: float = 0.0,
    neutral: float = 0.0,
    pointer: float = 0.0,
    neutral_letters: float = 0.0,
    lookalike: float = 0.0,
    near: float = 0.0,
) -> Path:
    """`samples` records in the LLaVA training format (`records.jsonl`): videos as .npy arrays at 1 fps
    with their questions as a multi-turn conversation, and a fraction `text` of text-only records (the
    cards described in words) that teach answering by letter cheaply."""
    folder = Path(folder)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(samples):
        if rng.random() < text:
            context, questions = text_sample(rng, split, turns, open_ratio, distractors, lookup)
            first, media = f"{context} ", {}
        else:
            n = int(rng.integers(frames[0], frames[1] + 1))
            k = hops[int(rng.integers(0, len(hops)))]
            video, questions = training_sample(
                n,
                rng,
                size,
                k,
                split,
                distractors=distractors,
                turns=turns,
                open_ratio=open_ratio,
                jitter=jitter,
                neutral=neutral,
                pointer=pointer,
                neutral_letters=neutral_letters,
                lookalike=lookalike,
                near=near,
            )
            name = f"videos/{i:06d}.npy"
            np.save(folder / name, video)
            first, media = "<image>\n", {"video": name, "fps": 1.0}
        conversation = []
        for k, q in enumerate(questions):
            conversation += [
                {"from": "human", "value": (first if k == 0 else "") + q.question},
                {"from": "gpt", "value": q.answer},
            ]
        lines.append(json.dumps({"id": f"needle-{seed}-{i}", **media, "conversations": conversation}))
    path = folder / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
