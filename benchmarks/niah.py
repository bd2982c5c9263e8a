"""Needle in a haystack on the bundled model: single-hop (pixel and embedding level) and multi-hop.

    python benchmarks/niah.py                     # the README's table (seed 2026: never used in training)
    python benchmarks/niah.py --trials 1 --quick  # a smoke run
    python benchmarks/niah.py --seed 3033 --parts pixel,embedding,multihop \
        --out benchmarks/results/niah_seed3033 --results benchmarks/results/niah_seed3033.json   # the replication

Needles are shape x colour pairs held out of training (`split="test"`), on a seed no training stage or
tuning run used. Every trial is kept in benchmarks/results/niah/<part>/trials.jsonl (resumable); the
table (by length, depth and question kind) goes to benchmarks/results/niah.json, the heatmaps beside it,
and `--readme` rewrites the README's table between its markers.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
START, END = "<!-- niah:start -->", "<!-- niah:end -->"


def by_kind(records: list[dict]) -> dict[str, dict[str, float]]:
    """Accuracy per (frames, question kind) from the trial records."""
    out: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for q in record["questions"]:
            out[str(record["frames"])][q["kind"]].append(q["correct"])
    return {f: {k: sum(v) / len(v) for k, v in kinds.items()} for f, kinds in out.items()}


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion measured as correct / n."""
    p, d = correct / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def all_cells_pass(p: float, n: int, cells: int, floor: float = 0.9) -> float:
    """Chance that every one of `cells` cells of n needles scores >= floor if each needle is right with chance p."""
    need = math.ceil(floor * n - 1e-9)
    one = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(need, n + 1))
    return one**cells


def run_part(model, name: str, settings, out: Path) -> dict:
    from longvid.niah.harness import run_niah

    summary = run_niah(model, settings, out / name, progress=sys.stderr.isatty())
    records = [json.loads(line) for line in (out / name / "trials.jsonl").read_text().splitlines()]
    # the trials' own times, so a resumed run still reports what the whole part cost
    return {"summary": summary, "by_kind": by_kind(records), "seconds": round(sum(r["seconds"] for r in records), 1)}


def interval(row: dict) -> str:
    """'94% (84-98%)': accuracy over a length's needles with its 95% interval."""
    lo, hi = wilson(round(row["accuracy"] * row["trials"]), row["trials"])
    return f"{row['accuracy']:.0%} ({lo:.0%}-{hi:.0%})"


def table(results: dict) -> str:
    lines = []
    single = [p for p in ("pixel", "embedding") if p in results["parts"]]
    if single:
        frames = list(results["parts"][single[0]]["summary"]["by_frames"])
        lines += [
            "| level | question | " + " | ".join(f"{f} frames" for f in frames) + " |",
            "|---|---|" + "---|" * len(frames),
        ]
        for part in single:
            p = results["parts"][part]
            lines.append(
                f"| {part} | all | " + " | ".join(interval(p["summary"]["by_frames"][f]) for f in frames) + " |"
            )
            for kind in ("shape", "color"):
                lines.append(
                    f"| {part} | {kind} | "
                    + " | ".join(f"{p['by_kind'].get(f, {}).get(kind, float('nan')):.0%}" for f in frames)
                    + " |"
                )
        lines.append("")
        for part in single:
            cells = results["parts"][part]["summary"]["cells"]
            worst = min(cells, key=lambda c: c["accuracy"])
            below = sum(c["accuracy"] < 0.9 for c in cells)
            total = results["parts"][part]["summary"]
            chance = all_cells_pass(total["accuracy"], cells[0]["trials"], len(cells))
            lines.append(
                f"Cells (length x depth) under 90%, {part}: {below} of {len(cells)}; worst {worst['accuracy']:.0%} "
                f"at {worst['frames']} frames, depth {worst['depth']} (a model right {total['accuracy']:.1%} of the "
                f"time has all {len(cells)} cells of {cells[0]['trials']} needles at >= 90% with chance {chance:.2f})."
            )
    if "multihop" in results["parts"]:
        m = results["parts"]["multihop"]["summary"]
        lines.append(
            f"Multi-hop ({results['settings']['hops']} cards, {results['settings']['multihop_frames']} "
            f"frames, {m['trials']} chains): {m['both_correct']:.0%} of chains fully right, "
            f"{m['accuracy']:.0%} of questions."
        )
    if "beyond" in results["parts"]:
        b = results["parts"]["beyond"]["summary"]
        lines.append(
            "Beyond the training length (pixel level, trained on <= 512 frames): "
            + ", ".join(f"{v['accuracy']:.0%} at {f} frames" for f, v in b["by_frames"].items())
            + f" ({results['settings']['beyond_trials']} needles per depth)."
        )
    s = results["settings"]
    lines.append("")
    lines.append(
        f"Seed {s['seed']}, {s['trials']} needles per cell, depths {s['depths']}, official letter scoring "
        f"(teacher-forced); in brackets the 95% (Wilson) interval; {results['machine']}; written by "
        "`benchmarks/niah.py`."
    )
    return "\n".join(lines)


def replication(results: dict, main: dict) -> str:
    """Two lines: the same grid on another fresh seed, then both seeds pooled."""
    parts, seed = results["parts"], results["settings"]["seed"]
    single = [p for p in ("pixel", "embedding") if p in parts and p in main["parts"]]

    def lengths(rows: list[dict]) -> str:
        return " / ".join(f"{r['accuracy']:.0%}" for r in rows)

    alone, pooled = [], []
    for part in single:
        mine, theirs = parts[part]["summary"], main["parts"][part]["summary"]
        cells = mine["cells"]
        alone.append(
            f"{part} {lengths(mine['by_frames'].values())} ({sum(c['accuracy'] < 0.9 for c in cells)} of "
            f"{len(cells)} cells under 90%)"
        )
        both = [
            {"accuracy": (a["accuracy"] * a["trials"] + b["accuracy"] * b["trials"]) / (a["trials"] + b["trials"])}
            for f, a in mine["by_frames"].items()
            for b in [theirs["by_frames"][f]]
        ]
        n = mine["by_frames"][next(iter(mine["by_frames"]))]["trials"] * 2
        other = {(c["frames"], c["depth"]): c for c in theirs["cells"]}
        low = sum(c["accuracy"] + other[c["frames"], c["depth"]]["accuracy"] < 1.8 - 1e-9 for c in cells)
        pooled.append(f"{part} {lengths(both)} ({n} needles per length; {low} of {len(cells)} cells under 90%)")
    if "multihop" in parts and "multihop" in main["parts"]:
        a, b = parts["multihop"]["summary"], main["parts"]["multihop"]["summary"]
        alone.append(f"multi-hop {a['both_correct']:.0%} of {a['trials']} chains")
        chains = a["trials"] + b["trials"]
        pooled.append(
            f"multi-hop {(a['both_correct'] * a['trials'] + b['both_correct'] * b['trials']) / chains:.0%} of {chains}"
            " chains"
        )
    frames = " / ".join(parts[single[0]]["summary"]["by_frames"]) if single else ""
    return (
        f"\nThe same grid on another fresh seed ({seed}; {frames} frames): " + "; ".join(alone) + ".\n"
        f"Both seeds ({main['settings']['seed']} and {seed}) together: " + "; ".join(pooled) + "."
    )


def chain_misses(folder: Path, results: dict) -> str:
    """What the multi-hop chains got wrong, from their trials: which caption a wrong answer picked."""
    from longvid.niah.harness import NiahSettings, make_trial

    path = folder / "multihop" / "trials.jsonl"
    if "multihop" not in results["parts"] or not path.is_file():
        return ""
    s = results["settings"]
    settings = NiahSettings(frames=[s["multihop_frames"]], hops=s["hops"], seed=s["seed"])
    picked: dict[str, int] = defaultdict(int)
    colour_only = 0
    for record in map(json.loads, path.read_text().splitlines()):
        caption, colour = record["questions"]
        colour_only += caption["correct"] and not colour["correct"]
        if caption["correct"]:
            continue
        trial = make_trial(settings, record["frames"], None, record["trial"])
        options = dict(re.findall(r"\(([A-D])\) ([^\n]+)", trial.questions[0].question))
        chosen, cards = options.get(caption["teacher_forced"], ""), trial.description.split(" -> ")
        shape = chosen.rsplit(" ", 1)[-1]
        if chosen in cards[:-1]:
            picked["an earlier card of the chain"] += 1
        elif shape == cards[-1].rsplit(" ", 1)[-1]:
            picked["the final card's shape in another colour"] += 1
        elif shape in [c.rsplit(" ", 1)[-1] for c in cards[:-1]]:
            picked["an earlier card's shape in another colour"] += 1
        else:
            picked["a shape not in the chain"] += 1
    chains = results["parts"]["multihop"]["summary"]["trials"]
    said = ", ".join(f"{k} {v}" for k, v in sorted(picked.items(), key=lambda kv: -kv[1]))
    return (
        f"Multi-hop misses, seed {s['seed']}: {sum(picked.values())} caption questions wrong ({said}), "
        f"and {colour_only} of {chains} chains with only the colour question wrong."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled tiny model)")
    ap.add_argument("--frames", default="250,500,1000,2000")
    ap.add_argument("--beyond-frames", default="3000,4000", help="part `beyond`: past the training length")
    ap.add_argument("--beyond-trials", type=int, default=2, help="needles per cell in part `beyond`")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--trials", type=int, default=10, help="needles per cell (length x depth), single-hop parts")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--hops", type=int, default=3)
    ap.add_argument("--multihop-frames", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=20)
    ap.add_argument("--parts", default="pixel,embedding,multihop,beyond")
    ap.add_argument("--quick", action="store_true", help="250 and 500 frames, depths 0 and 1")
    ap.add_argument("--out", type=Path, default=RESULTS / "niah", help="trials and heatmaps, one folder per part")
    ap.add_argument("--results", type=Path, default=RESULTS / "niah.json", help="the table's results file")
    ap.add_argument("--readme", action="store_true", help="rewrite the README table from the results file")
    ap.add_argument(
        "--replication",
        type=Path,
        nargs="*",
        default=sorted(RESULTS.glob("niah_seed*.json")),
        help="with --readme: results files of other fresh seeds, summarised under the table",
    )
    args = ap.parse_args()
    if args.readme:
        results = json.loads(args.results.read_text())
        text = README.read_text()
        if START not in text:
            sys.exit(f"{README}: no {START} marker")
        others = [(p.with_suffix(""), json.loads(p.read_text())) for p in args.replication]
        misses = [chain_misses(folder, r) for folder, r in [(args.results.with_suffix(""), results), *others]]
        body = "\n".join([table(results), *(replication(r, results) for _, r in others), "", *filter(None, misses)])
        README.write_text(re.sub(f"{START}.*?{END}", lambda _: f"{START}\n{body}\n{END}", text, flags=re.S))
        return 0

    import longvid
    from longvid.assets import default_model_path
    from longvid.niah.harness import NiahSettings

    torch.set_num_threads(max(1, torch.get_num_threads()))
    frames = [250, 500] if args.quick else [int(x) for x in args.frames.split(",")]
    depths = [0.0, 1.0] if args.quick else [float(x) for x in args.depths.split(",")]
    model = longvid.load(args.model or default_model_path())
    parts, out = {}, args.out
    for part in args.parts.split(","):
        if part in ("pixel", "embedding"):
            settings = NiahSettings(frames=frames, depths=depths, level=part, trials=args.trials, seed=args.seed)
        elif part == "beyond":  # pixel level, longer than any training video (<= 512 frames)
            beyond = [int(x) for x in args.beyond_frames.split(",")]
            settings = NiahSettings(frames=beyond, depths=depths, trials=args.beyond_trials, seed=args.seed)
        else:
            settings = NiahSettings(frames=[args.multihop_frames], hops=args.hops, trials=args.chains, seed=args.seed)
        parts[part] = run_part(model, part, settings, out)
        print(f"{part}: {parts[part]['summary']['accuracy']:.1%} ({parts[part]['seconds']} s)", flush=True)
    results = {
        "parts": parts,
        "settings": {
            "seed": args.seed,
            "trials": args.trials,
            "depths": depths,
            "frames": frames,
            "hops": args.hops,
            "multihop_frames": args.multihop_frames,
            "beyond_frames": args.beyond_frames,
            "beyond_trials": args.beyond_trials,
            "model": args.model or "bundled",
        },
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}",
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
