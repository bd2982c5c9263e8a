"""An append-only JSON-lines log that survives being killed at any instant.

A crash can leave the last line cut. Appending after such a line would glue the next record onto it
and lose both, so `read_records` first cuts the file back to its last complete line. `RecordWriter`
then writes each record with one `os.write` of the whole line (never a partial line left in a
buffered writer) and fsyncs it, so a trial that was reported finished is on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of a JSON-lines file; a cut last line is removed from the file itself."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # whatever follows the last newline was cut mid-write
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
    records = []
    for line in data[:keep].splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a damaged line: that trial runs again
        if isinstance(record, dict):
            records.append(record)
    return records


class RecordWriter:
    """`with RecordWriter(path) as log: log.append(record)`: one whole, fsync'd line per record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> RecordWriter:
        read_records(self.path)  # never append after a cut line
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None, "use RecordWriter as a context manager"
        line = (json.dumps(record) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # a full disk: do not leave half a line behind
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(f"could not write a whole record to {self.path} (disk full?)")
        os.fsync(self._fd)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
