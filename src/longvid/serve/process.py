"""`longvid serve` in a child process on a free loopback port: for tests, benchmarks and notebooks.

The real command in a real process (not the app in-process), so what is exercised is what users run:
argument parsing, model loading, uvicorn, sockets and signals.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start with `with ServerProcess(model, "--media-root", root) as server:`; `server.base_url` is the /v1 URL."""

    def __init__(self, model: str | os.PathLike, *args: str, log: Path | None = None, python: str | None = None):
        self.model, self.args = str(model), [str(a) for a in args]
        self.python = python or sys.executable  # another environment's (e.g. the vLLM one's)
        if log is None:
            fd, name = tempfile.mkstemp(prefix="longvid-serve-", suffix=".log")
            os.close(fd)
            log = Path(name)
        self.log = Path(log)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> ServerProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> ServerProcess:
        """Start the process without waiting (to start several servers side by side)."""
        self.port = free_port()
        cmd = [self.python, "-m", "longvid", "serve", "--model", self.model, "--port", str(self.port), *self.args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout: float = 180.0) -> ServerProcess:
        """Wait until /health answers; raise with the log's tail if the process exits or time runs out."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`longvid serve` exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"`longvid serve` did not answer /health within {timeout:g} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
