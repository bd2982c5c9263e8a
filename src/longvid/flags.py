"""Command-line flags shared by the `longvid` commands, and what turns them into checked options.

The CLI (cli.py) and the subsystems' commands (train/, serve/, niah/) import from here; nothing imports
cli.py but `__main__`. `sampling_flags` gives a command the sampling flags at once and hands it one
`SamplingOptions`.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import ConfigError
from .options import SamplingOptions

ModelOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="Checkpoint folder or hub id: owner/name, owner/name/subfolder (default: the bundled tiny model).",
)
RevisionOpt = typer.Option(None, "--revision", help="Hub branch, tag or commit of --model.")
SetOpt = typer.Option(None, "--set", help="Override a config.json key, e.g. --set mm_llm_compress=true.")
GenOpt = typer.Option(None, "--gen", help="Override a generation setting, e.g. --gen do_sample=false.")
DtypeOpt = typer.Option("float32", "--dtype", help="float32 or bfloat16.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ...")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object.")
CacheDirOpt = typer.Option(
    None,
    "--cache-dir",
    envvar="LONGVID_CACHE_DIR",
    help="Keep encoded videos here and reuse them (keyed by content, sampling and model).",
)
MaxNewOpt = typer.Option(None, "--max-new-tokens")
SystemOpt = typer.Option(None, "--system", help="Replace the default system prompt.")

SAMPLING_FLAGS = {  # parameter -> (type, flag, help)
    "max_frames": (int, "--max-frames", "Cap on sampled frames."),
    "fps": (
        float,
        "--fps",
        "Frames per second to sample; for .npy arrays and frame folders (no frame rate of "
        "their own) their frame rate instead.",
    ),
    "num_frames": (int, "--num-frames", "Sample exactly N frames uniformly."),
    "input_fps": (float, "--input-fps", "Frame rate of the input (arrays, frame folders)."),
    "start": (float, "--start", "Only look from this second on."),
    "end": (float, "--end", "Only look up to this second."),
}


def sampling_flags(command):
    """Give `command` the sampling flags; it receives them as `sampling: SamplingOptions` (checked) and
    `video` as given. For .npy arrays and frame folders without --input-fps, --fps is their frame rate."""
    signature = inspect.signature(command)
    flags = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind], default=typer.Option(None, flag, help=text)
        )
        for name, (kind, flag, text) in SAMPLING_FLAGS.items()
    ]

    @functools.wraps(command)
    def run(*args, **kwargs):
        given = {name: kwargs.pop(name) for name in SAMPLING_FLAGS}
        video = kwargs.get("video")
        path = Path(video) if isinstance(video, str) else None
        if (
            path is not None
            and given["fps"] is not None
            and given["input_fps"] is None
            and (path.suffix.lower() == ".npy" or path.is_dir())
        ):
            given["input_fps"], given["fps"] = given["fps"], None
        return command(*args, sampling=SamplingOptions(**given), **kwargs)

    params = [p for p in signature.parameters.values() if p.name != "sampling"]
    run.__signature__ = signature.replace(parameters=params + flags)
    return run


def parse_value(text: str) -> Any:
    """`--set` / `--gen` values: JSON when it parses (true, 3, [1,2]), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def parse_pairs(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def default_model_or_none() -> str | None:
    from .assets import default_model_path

    path = default_model_path()
    return str(path) if path else None


def default_model() -> str:
    path = default_model_or_none()
    if path is None:
        raise ConfigError("no --model given and no default model is installed")
    return path


def load_model(
    model: str | None,
    sets: list[str] | None,
    dtype: str,
    device: str = "cpu",
    revision: str | None = None,
    weights: bool = True,
):
    from .models import load

    return load(
        model or default_model(),
        device=device,
        dtype=dtype,
        overrides=parse_pairs(sets, "--set"),
        weights=weights,
        revision=revision,
    )
