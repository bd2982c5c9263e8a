"""Limits on what one request may ask of the model, shared by the CLI and the server.

Text is the one input whose cost is not bounded by the media rules: a prompt of tens of thousands of
tokens makes prefill slow and its activations large. So every entry point counts the text it is given
(system prompt, earlier turns, question) before any work and refuses more than `MAX_TEXT_TOKENS`.
Characters are checked first (`MAX_TEXT_CHARS`) so that a huge body is refused without being tokenized.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import InputError

MAX_TEXT_TOKENS = 8192  # system + history + question of one request (or one CLI call)
MAX_TEXT_CHARS = 8 * MAX_TEXT_TOKENS  # refused before tokenizing; real text is ~4 characters per token
MAX_MESSAGES = 256  # chat messages in one server request


def count_text_tokens(
    tokenizer, texts: Iterable[str | None], limit: int = MAX_TEXT_TOKENS, what: str = "the text"
) -> int:
    """Tokens in `texts` (None skipped); InputError naming the limit when they exceed it. Without a
    tokenizer only the characters are checked (before a model is loaded) and 0 is returned."""
    texts = [t for t in texts if t]
    chars = sum(len(t) for t in texts)
    if chars > 8 * limit:
        raise InputError(f"{what} has {chars} characters; at most {8 * limit} ({limit} tokens) are accepted")
    if tokenizer is None:
        return 0
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    if tokens > limit:
        raise InputError(f"{what} has {tokens} tokens; at most {limit} are accepted")
    return tokens
