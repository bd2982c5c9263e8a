"""The HTTP API's shapes: OpenAI's chat-completions format plus the video extensions users already send.

Requests follow vLLM / SGLang: a user message's content mixes `text`, `image_url` and `video_url`
parts. Frame sampling has no standard spelling, so every common one is accepted: Qwen-style keys on
the part (`fps`, `nframes`, `max_frames`, `video_start`, `video_end`; also inside the `video_url`
object, and `num_frames` / `start` / `end`), and vLLM's request-level `mm_processor_kwargs`
(`fps`, `num_frames`, `max_frames`); a part's own keys win. Unknown keys on a media part are refused,
so a typo (`nframe`) is an error instead of a silently ignored setting. Unknown top-level fields are
ignored, as OpenAI-compatible servers do, except the ones whose meaning we cannot honour (`n` > 1,
`logprobs`, `tools`), which are refused.

`Dialogue.from_request` maps the messages onto what the model takes: system messages -> `system`,
earlier user / assistant turns -> `history`, the last user message -> the question, and the one video
or image of the conversation -> `media`. The models place the video in the first user turn (the
official multi-turn format), so a conversation holds exactly one video or image.

Responses add one field, `longvid`, with the resolved sampling plan (frame indices, timestamps), the
feature-cache outcome and timings; `usage.prompt_tokens_details.visual_tokens` counts the video.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import InputError
from ..limits import MAX_MESSAGES
from ..options import MAX_FRAMES, MAX_SECONDS, MAX_TEMPERATURE, MIN_TEMPERATURE  # the CLI's limits

MAX_STOP_STRINGS = 16
SAMPLING_EPS = MIN_TEMPERATURE  # temperatures below this are greedy (as vLLM does): 1e-300 would overflow the softmax


def _unicode(value: str) -> str:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer or file system accepts: refuse them here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


# ------------------------------------------------------------------------------------------ requests


class SamplingKnobs(BaseModel):
    """Per-video frame sampling, in the Qwen / vLLM spellings (aliases map onto one name each)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fps: float | None = Field(None, gt=0)
    num_frames: int | None = Field(None, ge=1, le=MAX_FRAMES, validation_alias=AliasChoices("nframes", "num_frames"))
    max_frames: int | None = Field(None, ge=1, le=MAX_FRAMES)
    # seconds; bounded so that times x frame rates stay finite integers (1e308 s would overflow)
    start: float | None = Field(None, ge=0, le=MAX_SECONDS, validation_alias=AliasChoices("video_start", "start"))
    end: float | None = Field(None, gt=0, le=MAX_SECONDS, validation_alias=AliasChoices("video_end", "end"))

    @model_validator(mode="after")
    def _range(self) -> SamplingKnobs:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("video_end must be after video_start")
        return self

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, include=set(SamplingKnobs.model_fields))


class VideoURL(SamplingKnobs):
    url: Text


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Text
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's; the models have one resolution


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"]
    image_url: ImageURL


class VideoPart(SamplingKnobs):
    type: Literal["video_url"]
    video_url: VideoURL

    def sampling(self) -> dict[str, Any]:
        """The part's sampling keys, from the part and from inside `video_url`; they must agree."""
        outer, inner = self.given(), self.video_url.given()
        for key in outer.keys() & inner.keys():
            if outer[key] != inner[key]:
                raise InputError(f"video_url part: {key} is given twice with different values")
        return {**inner, **outer}


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _plain_text(cls, value: Any) -> Any:
        """A plain-string content is one text part (keeps validation errors about parts readable)."""
        return [{"type": "text", "text": value}] if isinstance(value, str) else value

    def text(self) -> str:
        return "\n".join(p.text for p in self.content or [] if isinstance(p, TextPart))

    def media(self) -> list[ImagePart | VideoPart]:
        return [p for p in self.content or [] if not isinstance(p, TextPart)]


class ProcessorKwargs(BaseModel):
    """vLLM's per-request `mm_processor_kwargs`, the keys that mean something for these models."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fps: float | None = Field(None, gt=0)
    num_frames: int | None = Field(None, ge=1, le=MAX_FRAMES, validation_alias=AliasChoices("num_frames", "nframes"))
    max_frames: int | None = Field(None, ge=1, le=MAX_FRAMES)
    do_sample_frames: bool = True

    @field_validator("do_sample_frames")
    @classmethod
    def _always_sampled(cls, value: bool) -> bool:
        if not value:
            raise ValueError("the server always samples frames itself; send a video, not pre-sampled frames")
        return value


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE)  # below MIN_TEMPERATURE: greedy
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM's extension; -1 or 0 = off
    repetition_penalty: float | None = Field(None, gt=0)  # vLLM's extension
    stop: Text | list[Text] | None = Field(None, validate_default=True)  # a list once validated
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    mm_processor_kwargs: ProcessorKwargs | None = None
    n: int = 1
    logprobs: bool | None = None
    tools: list[Any] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list | None) -> list | None:
        if value:
            raise ValueError("tools are not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise ValueError(f"stop takes up to {MAX_STOP_STRINGS} non-empty strings")
        return stops

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def generation(self) -> dict[str, Any]:
        """Overrides of the checkpoint's generation config (temperature 0 means greedy, > 0 sampling);
        what the request leaves out keeps the checkpoint's value, as vLLM does."""
        gen: dict[str, Any] = {
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature is not None:
            gen["do_sample"] = self.temperature >= SAMPLING_EPS
            if gen["do_sample"]:
                gen["temperature"] = self.temperature
        return {k: v for k, v in gen.items() if v is not None}


# ------------------------------------------------------------------------------------------ messages -> model


@dataclass
class MediaRef:
    """The conversation's one video or image, before it is fetched."""

    kind: Literal["video", "image"]
    url: str
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dialogue:
    """What `VideoLLM.answer` takes, taken from a list of chat messages."""

    question: str
    media: MediaRef
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None

    @classmethod
    def from_request(cls, request: ChatCompletionRequest) -> Dialogue:
        system: list[str] = []
        turns: list[list[str]] = []  # [role, text], consecutive messages of one role merged
        media: MediaRef | None = None
        for i, msg in enumerate(request.messages):
            parts = msg.media()
            if parts and msg.role != "user":
                raise InputError(f"messages[{i}]: only user messages may hold a video or image")
            if parts:
                if media is not None or len(parts) > 1:
                    raise InputError(
                        "exactly one video or image per conversation is supported "
                        "(send it once, in the first user message that needs it)"
                    )
                media = _media_ref(parts[0], request.mm_processor_kwargs)
            if msg.role in ("system", "developer"):
                system.append(msg.text())
            elif turns and turns[-1][0] == msg.role:
                turns[-1][1] = f"{turns[-1][1]}\n{msg.text()}"
            else:
                turns.append([msg.role, msg.text()])
        if not turns or turns[0][0] != "user":
            raise InputError("the conversation must start with a user message (after any system message)")
        if turns[-1][0] != "user":
            raise InputError("the last message must be from the user")
        if media is None:
            raise InputError("a video_url or image_url part is required (one per conversation)")
        history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
        return cls(turns[-1][1], media, history, "\n".join(system) if system else None)


def _media_ref(part: ImagePart | VideoPart, kwargs: ProcessorKwargs | None) -> MediaRef:
    if isinstance(part, ImagePart):
        return MediaRef("image", part.image_url.url)
    request_level = kwargs.model_dump(exclude_none=True, exclude={"do_sample_frames"}) if kwargs else {}
    sampling = {"max_frames": None, "fps": None, "num_frames": None, "start": None, "end": None}
    sampling.update(request_level)
    sampling.update(part.sampling())
    return MediaRef("video", part.video_url.url, sampling)


# ------------------------------------------------------------------------------------------ responses


class PromptTokensDetails(BaseModel):
    visual_tokens: int
    cached_tokens: int = 0  # OpenAI's prompt-cache count; the KV cache is not reused across requests


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class LongvidInfo(BaseModel):
    """What the server did with the video: the frames it looked at and what that cost."""

    plan: dict[str, Any]
    num_frames: int
    visual_tokens: int
    feature_cache: Literal["hit", "miss"]
    timings: dict[str, float]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    longvid: LongvidInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    longvid: LongvidInfo | None = None

    def sse(self, include_usage: bool) -> str:
        """One server-sent event; `usage` is present (null until the last chunk) only when asked for."""
        body = self.model_dump(exclude={"usage"} if not include_usage else None)
        if body["longvid"] is None:
            del body["longvid"]
        for choice in body["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return f"data: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "longvid"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | int | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
