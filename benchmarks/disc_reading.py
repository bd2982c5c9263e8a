"""How the bundled model tells a ring from a circle: by the card's colour (a pair training shows or one held
out), by haystack length, and with or without the colour named in the question.

    python benchmarks/disc_reading.py                    # 8, 256, 1,000 frames -> results/disc_reading.{json,png}
    python benchmarks/disc_reading.py --frames 8 --videos 2

Each card (a ring or a circle in one of the eight named colours, or in far unnamed colours) is spliced into
a generated haystack at a random place and asked "What shape is on the card?" (or "... on the green card?")
with circle, ring, square and star as the options; scored by the letter the model ranks first, with the
mean logit margin ring - circle. Training shows each named colour with exactly one of the two discs
(`longvid.data.needles.combos`), so "held out" rows are the NIAH benchmark's disc needles. Seeds 0-5 of the
haystack generator and 7 for far colours: no training stage uses these videos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
OPTIONS = ["circle", "ring", "square", "star"]


def read_disc(model, shape: str, frames: int, seed: int, colour: str | None, rgb, named: bool) -> tuple[float, bool]:
    """(logit ring - logit circle, read right?) for one card in a `frames`-frame haystack."""
    import torch

    from longvid.data.needles import Needle, _format, article, haystack, insert, needle_card
    from longvid.niah.harness import full_plan
    from longvid.pipeline import Pipeline
    from longvid.video.reader import ArrayVideo

    rng = np.random.default_rng(seed)
    card = needle_card(Needle(shape, colour or "red"), 64, seed, rgb=None if colour else rgb)
    video = np.stack(insert(list(haystack(frames - 1, 64, seed)), [[card]], [int(rng.integers(0, frames))]))
    options = [OPTIONS[i] for i in rng.permutation(4)]
    where = f"{article(colour)} card" if named and colour else "a card"
    text = f"Find the frame of {where}. What shape is on the {where.split(' ', 1)[1]}?"
    pipeline = Pipeline(model)
    with torch.no_grad():
        visual, _ = pipeline.encode(
            ArrayVideo(video, 1.0), full_plan(len(video), getattr(model.config, "frames_per_clip", 1))
        )
        logits, _, _ = pipeline.prefill(pipeline.prompt(visual.plan, _format(text, options)), visual)
    letters = [model.tokenizer(x, add_special_tokens=False).input_ids[0] for x in "ABCD"]
    scores = logits.flatten()[letters]
    margin = float(scores[options.index("ring")] - scores[options.index("circle")])
    return margin, int(scores.argmax()) == options.index(shape)


def run(frames: int, named: bool, videos: int) -> list[dict]:
    """Every row of one (length, question) setting, in its own process with one thread."""
    import torch

    import longvid
    from longvid.assets import default_model_path
    from longvid.data.needles import COLOURS, combos, pretraining_colour

    torch.set_num_threads(1)
    model = longvid.load(str(default_model_path()))
    train = set(combos("train"))
    rows = []
    for shape in ("ring", "circle"):
        cards = [(c, None, "train" if (shape, c) in train else "held out") for c in COLOURS]
        if not named:
            rng = np.random.default_rng(7)
            cards.append(("far", [pretraining_colour(rng) for _ in range(4 * videos)], "unnamed"))
        for name, far, status in cards:
            if far is None:
                reads = [read_disc(model, shape, frames, s, name, None, named) for s in range(videos)]
            else:
                reads = [read_disc(model, shape, frames, 100 + s, None, rgb, named) for s, rgb in enumerate(far)]
            rows.append(
                {
                    "frames": frames,
                    "colour_named": named,
                    "shape": shape,
                    "colour": name,
                    "pair": status,
                    "right": sum(r for _, r in reads),
                    "asked": len(reads),
                    "margin_ring_minus_circle": round(float(np.mean([m for m, _ in reads])), 2),
                }
            )
    return rows


def totals(rows: list[dict]) -> list[dict]:
    out = []
    for frames in sorted({r["frames"] for r in rows}):
        for named in (False, True):
            for shape in ("ring", "circle"):
                for pair in ("train", "held out", "unnamed"):
                    sel = [
                        r
                        for r in rows
                        if (r["frames"], r["colour_named"], r["shape"], r["pair"]) == (frames, named, shape, pair)
                    ]
                    if sel:
                        right, asked = sum(r["right"] for r in sel), sum(r["asked"] for r in sel)
                        out.append(
                            {"frames": frames, "colour_named": named, "shape": shape, "pair": pair, "right": right}
                            | {"asked": asked}
                        )
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{s['shape']} {s['pair']}\n{s['frames']} fr{' named' if s['colour_named'] else ''}"
        for s in summary
        if s["shape"] == "ring"
    ]
    values = [s["right"] / s["asked"] for s in summary if s["shape"] == "ring"]
    circle = [s["right"] / s["asked"] for s in summary if s["shape"] == "circle"]
    fig, ax = plt.subplots(figsize=(max(10.0, 0.95 * len(labels)), 3.6))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, values, 0.4, label="ring")
    ax.bar(x + 0.2, circle[: len(labels)], 0.4, label="circle (same setting)")
    ax.set_xticks(x, [label.replace("ring ", "") for label in labels], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("read right")
    ax.set_title("Bundled model: ring vs circle by colour pair, haystack length, question")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="8,256,1000", help="haystack lengths (card included)")
    ap.add_argument("--videos", type=int, default=6, help="haystacks per named colour (far colours: 4x)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "disc_reading.json")
    args = ap.parse_args()
    lengths = [int(f) for f in args.frames.split(",")]
    jobs = [(f, named) for f in lengths for named in (False, True)]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(run, *zip(*jobs), [args.videos] * len(jobs)))
    rows = [r for part in parts for r in part]
    summary = totals(rows)
    print("| frames | colour named | disc | pair | right |\n|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['frames']} | {s['colour_named']} | {s['shape']} | {s['pair']} | {s['right']}/{s['asked']} |")
    import torch

    result = {
        "settings": {"frames": lengths, "videos": args.videos, "model": "bundled", "options": OPTIONS},
        "machine": f"{platform.machine()} CPU, 1 torch thread per process, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(summary, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
