"""Wall time of a training run per stage, from its metrics.jsonl (the README's training times come from here).

python benchmarks/training_time.py runs/needle --out benchmarks/results/needle_training.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a `longvid train` output folder")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stages: dict[str, dict] = defaultdict(lambda: {"steps": 0, "seconds": 0.0})
    for row in rows:
        stages[row["stage"]]["steps"] += 1
        stages[row["stage"]]["seconds"] += row["seconds"]
    result = {
        "run": args.run.name,
        "stages": {k: {"steps": v["steps"], "minutes": round(v["seconds"] / 60, 1)} for k, v in stages.items()},
        "minutes_of_steps": round(sum(v["seconds"] for v in stages.values()) / 60, 1),
        "machine": f"{platform.machine()} CPU, 2 processes x 1 thread, Python {platform.python_version()}",
    }
    print("| stage | steps | minutes |\n|---|---|---|")
    for name, v in result["stages"].items():
        print(f"| {name} | {v['steps']} | {v['minutes']} |")
    print(f"| all | {len(rows)} | {result['minutes_of_steps']} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
