"""Generated token ids -> text as it is made: one implementation for the CLI, the chat REPL and the server.

`TextStream` hands out whole characters only (a token may end inside a UTF-8 sequence), drops leading
whitespace (as the models' own answers are stripped), and cuts stop strings out: text that might be
the start of a stop string is held back until it is known not to be, so a stop string never reaches a
streaming client half-written. Streamed and non-streamed answers are the same text.
"""

from __future__ import annotations

import sys
from typing import TextIO


class TextStream:
    """Token ids in, text deltas out: whole characters, no leading whitespace, stop strings cut."""

    def __init__(self, tokenizer, stop: list[str] = ()):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] decode to text already taken
        self.text = ""  # the answer so far (up to any stop string)
        self.sent = 0  # characters of `text` handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """The text that token makes safe to show (may be ""); sets `stopped` at a stop string."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
            if not self.sent:
                self.text = self.text.lstrip()
        return self._release()

    def flush(self) -> str:
        """What is still held back, once no more tokens will come."""
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta

    def _release(self) -> str:
        start = max(self.sent - max((len(s) for s in self.stop), default=0), 0)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
            return self.flush()
        safe = len(self.text) - self._held_back()
        delta, self.sent = self.text[self.sent : safe], max(safe, self.sent)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of `text` (not yet sent) that begins some stop string."""
        for n in range(min(len(self.text) - self.sent, max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stop):
                return n
        return 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


class TokenPrinter:
    """An `on_token` callback that writes each token's text to a stream as soon as it is whole."""

    def __init__(self, tokenizer, stream: TextIO | None = None):
        self.text = TextStream(tokenizer)
        self.stream = stream or sys.stdout

    def __call__(self, token: int) -> None:
        delta = self.text.push(token)
        if delta:
            self.stream.write(delta)
            self.stream.flush()
