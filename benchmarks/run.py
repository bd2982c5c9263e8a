"""Run every benchmark (or the ones named) and print their tables.

python benchmarks/run.py                 # all
python benchmarks/run.py chat_latency    # one
python benchmarks/run.py gpu_scaling     # not in the default list: it needs a CUDA device
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# gpu_scaling: by name, on a GPU
BENCHMARKS = [
    "video_io",
    "chat_latency",
    "video_xl",
    "serve_load",
    "long_prompt",
    "scaling",
    "niah",
    "disc_reading",
    "eval_throughput",
]
# the full scaling run takes hours on a small CPU machine: run it by hand; niah: its defaults are the committed grid
ARGS = {"scaling": ["--quick"]}


def main() -> int:
    names = sys.argv[1:] or [b for b in BENCHMARKS if (HERE / f"{b}.py").exists()]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{name}.py"), *ARGS.get(name, [])]).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
