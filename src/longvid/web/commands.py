"""`longvid web` (cli.py maps the name to `web`); FastAPI and uvicorn load only when it runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..flags import DeviceOpt, DtypeOpt, ModelOpt, SetOpt, default_model, parse_pairs


def web(
    model: Optional[str] = ModelOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(7860, "--port"),
    media_root: Optional[Path] = typer.Option(None, "--media-root", help="Offer the videos under this folder."),
    max_media_mb: float = typer.Option(32.0, "--max-media-mb", help="Largest upload (as `longvid serve`)."),
    frame_limit: int = typer.Option(1024, "--frame-limit", help="Most frames one video may sample."),
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """A web page to ask about a video: upload or pick one, see its plan, encode once, then chat."""
    import uvicorn

    from ..serve.media import MediaPolicy
    from .app import WebSettings, create_app

    if not 0 < max_media_mb < 1e6 or frame_limit < 1:
        raise ConfigError("--max-media-mb and --frame-limit must be positive")
    policy = MediaPolicy(media_root, max_bytes=int(max_media_mb * (1 << 20)))
    settings = WebSettings(model or default_model(), parse_pairs(sets, "--set"), dtype, device, policy, frame_limit)
    app = create_app(settings)  # loads the model now: a bad --model fails here, in one line
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"warning: listening on {host}: anyone who can reach it can use the model and upload videos",
            file=sys.stderr,
        )
    print(f"longvid web: http://{host}:{port}/ (pid {os.getpid()})", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
