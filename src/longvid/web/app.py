"""The `longvid web` application: one page, a small JSON + server-sent-events API behind it.

Every step is the pipeline's (pipeline.py): `video_report` (what `longvid info` prints) before anything
is decoded, `Pipeline.session` to encode once, `ChatSession.ask` per question. Media goes through the
server's rules (serve/media.py): uploads are capped at `MediaPolicy.max_bytes`, picked files must lie
under `--media-root`, and frame sizes above `MAX_VIDEO_PIXELS` are refused from the header.

State: one base model and one `FeatureCache` for the whole process; each browser tab sends its own
random id, and owns its video and `ChatSession` (so two tabs never share a chat). Compression settings
are `--set` overrides: a model with other settings is loaded by `models.load` (the CLI's validators),
and at most `MAX_VARIANTS` such variants are kept beside the base model. One job at a time runs a
model (they are not re-entrant): encodes and answers queue on `model_lock`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ..errors import ConfigError, InputError, LongvidError
from ..features import FeatureCache
from ..limits import MAX_TEXT_TOKENS, count_text_tokens
from ..models import load
from ..options import GenerationOptions, SamplingOptions
from ..pipeline import Pipeline
from ..report import video_report
from ..serve.media import MAX_VIDEO_PIXELS, Media, MediaPolicy, MediaResolver, MediaTooLarge, checked_resolution
from ..session import ChatSession
from ..streaming import TextStream
from ..video import Video, open_video

log = logging.getLogger("longvid.web")

PAGE = Path(__file__).with_name("page.html")
# the `--set` keys of each family's compression, as the page offers them (ToMe's 16 tokens per frame are
# fixed by the released `tome16_mlp_hd64` projector: shown, not settable)
COMPRESSION_KEYS = {
    "videochat_flash": (
        "mm_llm_compress",
        "llm_compress_type",
        "llm_compress_layer_list",
        "llm_image_token_ratio_list",
    ),
    "video_xl": ("enable_beacon", "beacon_ratio"),
}
MAX_VARIANTS = 1  # models with other compression settings kept loaded beside the base model (each is a copy)
MAX_TABS = 32  # browser tabs with a video; the least recently used one is forgotten
MAX_THUMBS = 64  # frames shown in the strip (evenly spread over the plan)
THUMB_HEIGHT = 72


@dataclass
class WebSettings:
    model: str
    sets: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    media: MediaPolicy = field(default_factory=MediaPolicy)
    frame_limit: int = 1024
    cache_items: int = 8
    max_new_tokens: int | None = None


@dataclass
class Tab:
    """One browser tab: its video and, once encoded, its chat."""

    media: Media | None = None
    name: str = ""
    session: ChatSession | None = None


class WatchedVideo(Video):
    """A video that reports each decoded frame (progress, thumbnails) as the model reads it."""

    def __init__(self, inner: Video, on_frame: Callable[[int, np.ndarray], None]):
        self.inner, self.on_frame = inner, on_frame
        self.info, self.source, self.warnings, self.is_image = inner.info, inner.source, inner.warnings, inner.is_image
        self.array = getattr(inner, "array", None)  # what the feature cache hashes for in-memory videos

    def _frames_sorted(self, indices):
        for i, frame in self.inner._frames_sorted(indices):
            self.on_frame(i, frame)
            yield i, frame

    def close(self) -> None:
        self.inner.close()


def thumbnail(frame: np.ndarray) -> str:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
    img.thumbnail((THUMB_HEIGHT * 4, THUMB_HEIGHT))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def strip_indices(plan_indices: list[int]) -> set[int]:
    unique = sorted(set(plan_indices))
    if len(unique) <= MAX_THUMBS:
        return set(unique)
    return {unique[round(i * (len(unique) - 1) / (MAX_THUMBS - 1))] for i in range(MAX_THUMBS)}


class WebState:
    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.base = load(settings.model, settings.device, settings.dtype, settings.sets)
        self.variants: OrderedDict[str, Any] = OrderedDict()
        self.cache = FeatureCache(max_items=settings.cache_items)
        self.model_lock = threading.Lock()
        self.tabs: OrderedDict[str, Tab] = OrderedDict()
        self.tabs_lock = threading.Lock()
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="longvid-web-"))
        self.media = MediaResolver(settings.media, self.tmp_dir)
        self._example: Path | None = None
        self._example_lock = threading.Lock()

    # ---------------------------------------------------------------- models
    def compression(self) -> dict[str, Any]:
        raw = self.base.config.raw
        return {k: raw.get(k) for k in COMPRESSION_KEYS.get(self.base.family, ())}

    def model(self, settings: dict[str, Any] | None):
        """The base model, or one loaded with other compression settings (validated as `--set` is)."""
        allowed = COMPRESSION_KEYS.get(self.base.family, ())
        changed = {}
        for key, value in (settings or {}).items():
            if key not in allowed:
                raise ConfigError(
                    f"{key}: not a compression setting of {self.base.family} (known: {', '.join(allowed) or 'none'})"
                )
            if value != self.base.config.raw.get(key):
                changed[key] = value
        if not changed:
            return self.base
        key = json.dumps(changed, sort_keys=True)
        with self.model_lock:
            if key not in self.variants:
                self.variants[key] = load(
                    self.settings.model, self.settings.device, self.settings.dtype, {**self.settings.sets, **changed}
                )
                while len(self.variants) > MAX_VARIANTS:
                    self.variants.popitem(last=False)
            self.variants.move_to_end(key)
            return self.variants[key]

    # ---------------------------------------------------------------- tabs
    def tab(self, tab_id: str, create: bool = False) -> Tab:
        if not tab_id or len(tab_id) > 64:
            raise InputError("missing tab id (reload the page)")
        with self.tabs_lock:
            if tab_id not in self.tabs:
                if not create:
                    raise InputError("no video yet: upload or pick one")
                self.tabs[tab_id] = Tab()
                while len(self.tabs) > MAX_TABS:
                    _, old = self.tabs.popitem(last=False)
                    if old.media is not None:
                        old.media.cleanup()
            self.tabs.move_to_end(tab_id)
            return self.tabs[tab_id]

    def set_video(self, tab_id: str, media: Media, name: str) -> dict[str, Any]:
        """Check the video (header size, that it opens) and give it to the tab; the report of its default plan."""
        try:
            checked_resolution(media)
            report = self.report(media, {}, {}, name)
        except BaseException:
            media.cleanup()
            raise
        tab = self.tab(tab_id, create=True)
        if tab.media is not None and tab.media.temp != media.temp:
            tab.media.cleanup()
        tab.media, tab.name, tab.session = media, name, None
        return report

    def example(self) -> Path:
        """A generated one-minute video (made once), so the page works offline on a fresh machine."""
        with self._example_lock:  # two tabs opening at once write it once
            if self._example is None or not self._example.is_file():
                from ..demo import needle_video

                path = self.tmp_dir / "example.mp4"
                needle_video(path, minutes=1.0, seed=0)
                self._example = path
            return self._example

    # ---------------------------------------------------------------- the pipeline's steps
    def report(self, media: Media, sampling: dict, settings: dict, name: str) -> dict[str, Any]:
        """What `longvid info` shows: the video, and the plan / tokens / context before any decoding."""
        options = SamplingOptions.of(sampling)
        model = self.model(settings)
        with labelled(media, name), open_video(media.source, fps=options.input_fps) as video:
            Pipeline(model).plan(video, options, self.settings.frame_limit)  # refuse too many frames first
            report = video_report(video, model, options).to_dict()
        report["video"]["source"] = name
        return report

    def encode(self, tab_id: str, sampling: dict, settings: dict, emit: Callable[[dict], None]) -> None:
        tab = self.tab(tab_id)
        options = SamplingOptions.of(sampling)
        model = self.model(settings)
        pipeline = Pipeline(model, self.cache)
        with labelled(tab.media, tab.name), open_video(tab.media.source, fps=options.input_fps) as video:
            plan = pipeline.plan(video, options, self.settings.frame_limit)
            times = dict(zip(plan.indices, plan.timestamps))
            shown, total, done = strip_indices(plan.indices), len(set(plan.indices)), [0]

            def on_frame(i: int, frame: np.ndarray) -> None:
                done[0] += 1
                emit({"type": "progress", "done": done[0], "total": total})
                if i in shown:
                    emit({"type": "frame", "index": i, "t": times[i], "src": thumbnail(frame)})

            emit({"type": "progress", "done": 0, "total": total})
            with self.model_lock:
                session = pipeline.session(WatchedVideo(video, on_frame), options)
            if session.stats.cache_hit:  # nothing was decoded: read just the strip's frames
                for i, frame in zip(sorted(shown), video.frames(sorted(shown))):
                    emit({"type": "frame", "index": i, "t": times[i], "src": thumbnail(frame)})
        tab.session = session
        emit({"type": "ready", "info": _jsonable(session.info()), "name": tab.name})

    def ask(self, tab_id: str, question: str, emit: Callable[[dict], None]) -> None:
        tab = self.tab(tab_id)
        session = tab.session
        if session is None:
            raise InputError("encode the video first")
        if not question.strip():
            raise InputError("the question is empty")
        model = session.model
        texts = [question, *(t for turn in session.history for t in turn)]
        count_text_tokens(model.tokenizer, texts, MAX_TEXT_TOKENS, "the conversation's text")
        budget = session.pipeline.prompt(session.visual.plan, question, session.history, check=True).budget
        text = TextStream(model.tokenizer)

        def on_token(token: int) -> None:
            delta = text.push(token)
            if delta:
                emit({"type": "token", "text": delta})

        with self.model_lock:
            answer = session.ask(
                question, gen=GenerationOptions(max_new_tokens=self.settings.max_new_tokens), on_token=on_token
            )
        if tail := text.flush():
            emit({"type": "token", "text": tail})
        emit(
            {
                "type": "done",
                "text": answer.text,
                "finish_reason": answer.finish_reason,
                "timings": _jsonable(answer.timings),
                "budget": _jsonable(budget.to_dict()),
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": len(answer.token_ids),
                "visual_tokens": answer.num_visual_tokens,
                "frames": answer.num_frames,
                "turn": session.stats.turns,
            }
        )

    def close(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class labelled:
    """Errors about a temp file of ours name the file as the user called it, never our path."""

    def __init__(self, media: Media | None, name: str):
        if media is None:
            raise InputError("no video yet: upload or pick one")
        self.media, self.name = media, name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, InputError) and self.media.temp is not None:
            raise type(error)(str(error).replace(str(self.media.temp), self.name)) from None
        return False


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: float(v) if isinstance(v, (np.floating, float)) else str(v)))


def one_line(error: BaseException) -> str:
    if isinstance(error, LongvidError):
        return f"error: {' '.join(str(error).split())}"
    log.exception("internal error", exc_info=error)
    return f"internal error: {type(error).__name__} (see the server log)"


def error_status(error: BaseException) -> int:
    return getattr(error, "status", 400) if isinstance(error, LongvidError) else 500


def events(job: Callable[[Callable[[dict], None]], None]) -> StreamingResponse:
    """Run `job` on a thread; what it emits goes to the page as server-sent events, an error as one line."""
    out: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            job(out.put)
        except BaseException as e:  # noqa: BLE001 -- reported to the page as one line, never a traceback
            out.put({"type": "error", "message": one_line(e)})
        finally:
            out.put(None)

    threading.Thread(target=run, daemon=True, name="longvid-web-job").start()

    def stream() -> Iterator[str]:
        while (event := out.get()) is not None:
            yield f"data: {json.dumps(event)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def create_app(settings: WebSettings) -> FastAPI:
    state = WebState(settings)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()  # uploads and the example video go with the server

    app = FastAPI(title="longvid web", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.web = state

    @app.exception_handler(LongvidError)
    async def _refused(request: Request, error: LongvidError):
        return JSONResponse({"error": one_line(error)}, status_code=error_status(error))

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception):  # logged here; the page gets one line
        return JSONResponse({"error": one_line(error)}, status_code=500)

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise InputError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise InputError("the request body must be a JSON object")
        return data

    def files() -> list[str]:
        root = settings.media.root
        if root is None:
            return []
        found = (p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        return sorted(str(p.relative_to(root)) for _, p in zip(range(500), found))  # a huge root: the first 500

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        m = state.base
        name = Path(m.name).name if Path(m.name).is_dir() else m.name  # a folder: its name, not our disk's layout
        return {
            "model": name,
            "family": m.family,
            "compression": state.compression(),
            "compressors": [c.describe() for c in m.compressors],
            "files": files(),
            "limits": {
                "max_upload_bytes": settings.media.max_bytes,
                "max_pixels": MAX_VIDEO_PIXELS,
                "frame_limit": settings.frame_limit,
            },
        }

    @app.post("/api/upload")
    async def upload(request: Request, tab: str, name: str = "upload.mp4") -> dict[str, Any]:
        limit = settings.media.max_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise MediaTooLarge(f"the video is larger than this server's limit of {limit / (1 << 20):g} MiB")
        suffix = Path(name).suffix.lower()[:8] or ".mp4"
        temp = state.tmp_dir / f"{uuid.uuid4().hex}{suffix}"
        size = 0
        with temp.open("wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    f.close()
                    temp.unlink(missing_ok=True)
                    raise MediaTooLarge(f"the video is larger than this server's limit of {limit / (1 << 20):g} MiB")
                f.write(chunk)
        return await _threaded(state.set_video, tab, Media(temp, temp, Path(name).name), Path(name).name)

    @app.post("/api/pick")
    async def pick(request: Request) -> dict[str, Any]:
        data = await body(request)
        rel = str(data.get("path", ""))
        if settings.media.root is None:
            raise InputError("no --media-root: upload a video instead")
        media = state.media.resolve((settings.media.root / rel).absolute().as_uri(), "video")
        return await _threaded(state.set_video, str(data.get("tab", "")), media, rel)

    @app.post("/api/example")
    async def example(request: Request) -> dict[str, Any]:
        data = await body(request)
        path = await _threaded(state.example)
        return await _threaded(state.set_video, str(data.get("tab", "")), Media(path), "example.mp4 (generated)")

    @app.post("/api/plan")
    async def plan(request: Request) -> dict[str, Any]:
        data = await body(request)
        tab = state.tab(str(data.get("tab", "")))
        return await _threaded(
            state.report, tab.media, data.get("sampling") or {}, data.get("settings") or {}, tab.name
        )

    @app.post("/api/encode")
    async def encode(request: Request):
        data = await body(request)
        tab_id, sampling, sets = str(data.get("tab", "")), data.get("sampling") or {}, data.get("settings") or {}
        state.tab(tab_id)
        SamplingOptions.of(sampling)  # refuse bad values before the stream starts
        return events(lambda emit: state.encode(tab_id, sampling, sets, emit))

    @app.post("/api/ask")
    async def ask(request: Request):
        data = await body(request)
        tab_id, question = str(data.get("tab", "")), str(data.get("question", ""))
        state.tab(tab_id)
        return events(lambda emit: state.ask(tab_id, question, emit))

    @app.post("/api/reset")
    async def reset(request: Request) -> dict[str, Any]:
        data = await body(request)
        tab = state.tab(str(data.get("tab", "")))
        if tab.session is not None:
            tab.session.reset()
        return {"ok": True, "history": 0}

    return app


async def _threaded(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
