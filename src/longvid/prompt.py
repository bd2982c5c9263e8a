"""Prompt strings and tokenisation, byte-identical to the official `conv_qwen` (ChatML) template.

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<image>\\n{time message} {question}<|im_end|>\\n
    <|im_start|>assistant\\n

`<image>` is never a vocabulary token: the text is cut at it and the id -200 marks where the visual
tokens go (the official `tokenizer_image_token`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
DEFAULT_SYSTEM = "You are a helpful assistant."
IM_END = "<|im_end|>"


def time_message(duration: float, num_frames: int) -> str:
    """VideoChat-Flash's "short" time message, with its leading newline and trailing space."""
    return f"\nThe video lasts for {duration:.2f} seconds, and {num_frames} frames are uniformly sampled from it. "


@dataclass
class Conversation:
    """A ChatML conversation; `turns` alternate user / assistant, the first user turn holds `<image>`."""

    system: str = DEFAULT_SYSTEM
    turns: list[tuple[str, str]] = field(default_factory=list)

    def add(self, role: str, text: str) -> None:
        self.turns.append((role, text))

    def render(self, add_generation_prompt: bool = True) -> str:
        out = f"<|im_start|>system\n{self.system}{IM_END}\n"
        for role, text in self.turns:
            # like the official template, an empty message renders as an open header
            out += f"<|im_start|>{role}\n{text}{IM_END}\n" if text else f"<|im_start|>{role}\n"
        if add_generation_prompt:
            out += "<|im_start|>assistant\n"
        return out

    def copy(self) -> Conversation:
        return Conversation(self.system, list(self.turns))


def tokenize_with_image(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` with IMAGE_TOKEN_INDEX where each `<image>` was."""
    ids: list[int] = []
    for i, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    return ids


def decode_answer(tokenizer, ids: list[int]) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    if text.endswith(IM_END):
        text = text[: -len(IM_END)]
    return text.strip()
