"""`longvid serve` (cli.py maps the name to `serve`); FastAPI and uvicorn load only when it runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..flags import CacheDirOpt, DeviceOpt, DtypeOpt, ModelOpt, RevisionOpt, SetOpt, load_model, parse_pairs
from ..limits import MAX_TEXT_TOKENS

LOOPBACK = ("127.0.0.1", "::1", "localhost")
ENGINES = ("longvid", "vllm")


def serve(
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="LONGVID_API_KEY", help="Require `Authorization: Bearer KEY` on /v1 routes."
    ),
    served_model_name: Optional[str] = typer.Option(
        None, "--served-model-name", help="The model id clients send (default: --model)."
    ),
    media_root: Optional[Path] = typer.Option(
        None, "--media-root", help="Allow file:// URLs, for files under this folder only."
    ),
    allow_remote_media: bool = typer.Option(
        False, "--allow-remote-media", help="Allow http(s):// media URLs (public addresses only)."
    ),
    max_media_mb: float = typer.Option(32.0, "--max-media-mb", help="Largest data: payload or download."),
    fetch_timeout: float = typer.Option(30.0, "--fetch-timeout", help="Seconds allowed for one download."),
    max_concurrency: int = typer.Option(
        2,
        "--max-concurrency",
        help="Requests in progress at once (the model runs one at a time; the others fetch media or wait for it).",
    ),
    max_queue: int = typer.Option(32, "--max-queue", help="Requests waiting beyond those; more get HTTP 429."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds per request, queueing included (then 504)."),
    frame_limit: int = typer.Option(1024, "--frame-limit", help="Most frames one request may sample."),
    cache_dir: Optional[Path] = CacheDirOpt,
    cache_items: int = typer.Option(8, "--cache-items", help="Encoded videos kept in memory."),
    max_text_tokens: int = typer.Option(
        MAX_TEXT_TOKENS, "--max-text-tokens", help="Most text tokens (system + history + question) in one request."
    ),
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    engine: str = typer.Option(
        "longvid",
        "--engine",
        help="longvid: one request at a time on this process's model. vllm: vLLM's engine batches concurrent "
        "requests (VideoChat-Flash checkpoints; needs longvid[vllm]).",
    ),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="GPUs per model (--engine vllm)."),
    vllm_args: Optional[list[str]] = typer.Option(
        None,
        "--vllm-arg",
        help="A vLLM engine argument (--engine vllm), e.g. --vllm-arg max_model_len=32768 "
        "--vllm-arg gpu_memory_utilization=0.8.",
    ),
):
    """Serve MODEL over an OpenAI-compatible API: POST /v1/chat/completions with video_url / image_url parts."""
    import logging

    import uvicorn

    from .app import ServerSettings, create_app
    from .media import MediaPolicy

    if (
        max_concurrency < 1
        or max_queue < 0
        or not 0 < timeout < 1e9
        or frame_limit < 1
        or max_text_tokens < 1
        or not 0 < max_media_mb < 1e6
        or not 0 < fetch_timeout < 1e9
        or cache_items < 0
        or tensor_parallel_size < 1
    ):
        raise ConfigError(
            "--max-concurrency, --timeout, --fetch-timeout, --frame-limit, --max-text-tokens and "
            "--max-media-mb must be positive (and finite), --max-queue and --cache-items at least 0, "
            "--tensor-parallel-size at least 1"
        )
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "longvid" and (tensor_parallel_size != 1 or vllm_args):
        raise ConfigError("--tensor-parallel-size and --vllm-arg need --engine vllm")
    policy = MediaPolicy(media_root, allow_remote_media, int(max_media_mb * (1 << 20)), fetch_timeout)
    if engine == "vllm":
        m = vllm_engine(model, sets, dtype, revision, tensor_parallel_size, parse_pairs(vllm_args, "--vllm-arg"))
    else:
        m = load_model(model, sets, dtype, device, revision)
    settings = ServerSettings(
        served_model_name or model or m.name,
        api_key,
        policy,
        max_concurrency,
        max_queue,
        timeout,
        frame_limit,
        cache_dir,
        cache_items,
        max_text_tokens,
    )
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    if host not in LOOPBACK and not api_key:
        print(
            f"warning: listening on {host} without --api-key: anyone who can reach it can use the model",
            file=sys.stderr,
        )
    print(f"longvid: serving {settings.model_id!r} at http://{host}:{port}/v1 (pid {os.getpid()})", file=sys.stderr)
    uvicorn.run(
        create_app(m, settings),
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=5,
        http=json_error_protocol(),
    )


def vllm_engine(model, sets, dtype, revision, tensor_parallel_size: int, engine_args: dict):
    """vLLM's async engine behind the same API (longvid/vllm/server.py); the checkpoint is read here
    without weights (tokenizer, sampler, budgets), vLLM loads the weights itself."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ConfigError("--engine vllm needs vLLM: pip install 'longvid[vllm]'") from None
    from ..vllm.server import VLLMChatEngine

    builder = load_model(model, sets, dtype, "cpu", revision, weights=False)
    if builder.family != "videochat_flash":
        raise ConfigError(f"--engine vllm serves VideoChat-Flash checkpoints; {builder.name} is {builder.family}")
    if builder.model.token_drop is not None:  # refused before vLLM starts its processes (model.py says why)
        raise ConfigError(
            "mm_llm_compress=true (in-LLM token dropping) is not supported by --engine vllm; serve with "
            "--engine longvid, or add --set mm_llm_compress=false (answers then differ from the released model's)"
        )
    try:
        return VLLMChatEngine(builder, tensor_parallel_size, **engine_args)
    except (TypeError, ValueError) as e:  # an unknown or invalid --vllm-arg (pydantic errors are ValueErrors)
        raise ConfigError(f"vLLM refused the engine arguments: {str(e).splitlines()[0]}") from None


def json_error_protocol():
    """uvicorn's h11 protocol, answering requests it cannot parse (`Content-Length: abc`, a broken
    request line) with OpenAI's JSON error shape instead of a plain-text 400."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JSONErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(
                {
                    "error": {
                        "message": f"malformed HTTP request ({msg.rstrip('.')})",
                        "type": "invalid_request_error",
                        "code": "invalid_request",
                        "param": None,
                    }
                }
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JSONErrorH11Protocol
