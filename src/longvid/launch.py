"""`--nproc N`: rerun a longvid command under torch.distributed.run on this machine (train, eval)."""

from __future__ import annotations

import os
import subprocess
import sys


def torchrun(command: str, nproc: int, args: list[str]) -> int:
    """`longvid COMMAND ARGS` in `nproc` processes; the cores are split between them (OMP_NUM_THREADS)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "longvid"]
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call([*cmd, command, *args], env=dict(os.environ, OMP_NUM_THREADS=threads))
