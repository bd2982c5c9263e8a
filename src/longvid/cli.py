"""The `longvid` command line. Every user mistake ends as one line on stderr and exit code 2.

Each command is a thin layer over the pipeline (pipeline.py): flags -> checked options -> one call. The
subsystems' commands (train, serve, niah) are plain functions in their packages; the table at the end
maps names to them, so no subsystem imports this module.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from .errors import ConfigError, LongvidError
from .eval.commands import eval_command
from .flags import (
    CacheDirOpt,
    DeviceOpt,
    DtypeOpt,
    GenOpt,
    JsonOpt,
    MaxNewOpt,
    ModelOpt,
    RevisionOpt,
    SetOpt,
    SystemOpt,
    default_model_or_none,
    load_model,
    parse_pairs,
    sampling_flags,
)
from .limits import count_text_tokens
from .niah.commands import niah
from .options import GenerationOptions, SamplingOptions, check_device
from .serve.commands import serve
from .train.commands import merge_lora, train
from .web.commands import web

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Understand hour-long videos with multimodal LLMs.",
)

VideoArg = typer.Argument(..., help="Video file, image, folder of frames, or .npy array [T,H,W,3].")


@app.callback()
def _root() -> None:
    """Understand hour-long videos with multimodal LLMs."""


def open_source(video: str, sampling: SamplingOptions):
    """Open VIDEO before loading any weights, so that bad paths fail fast; warnings go to stderr."""
    from .video import open_video

    source = open_video(video, fps=sampling.input_fps)
    for warning in source.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return source


def feature_cache(cache_dir: Path | None):
    from .features import FeatureCache

    return FeatureCache(cache_dir) if cache_dir is not None else None


@app.command()
@sampling_flags
def ask(
    video: str = VideoArg,
    question: Optional[str] = typer.Argument(None),
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    features: Optional[Path] = typer.Option(
        None, "--features", help="Encoded video from `longvid encode` (then the only argument is the question)."
    ),
    max_new_tokens: Optional[int] = MaxNewOpt,
    sets: Optional[list[str]] = SetOpt,
    gens: Optional[list[str]] = GenOpt,
    system: Optional[str] = SystemOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    as_json: bool = JsonOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    sampling: SamplingOptions = SamplingOptions(),
):
    """Answer QUESTION about VIDEO (or about an encoded video: --features FILE QUESTION)."""
    from .features import load_features
    from .pipeline import Pipeline
    from .streaming import TokenPrinter

    gen = GenerationOptions.of(parse_pairs(gens, "--gen"), max_new_tokens=max_new_tokens)
    check_device(device)
    if features is not None:
        if question is not None:
            raise ConfigError("with --features, give only the question")
        question, source = video, None
    elif question is None:
        raise ConfigError("missing QUESTION")
    count_text_tokens(None, [system, question], what="--system and the question")
    if features is None:
        source = open_source(video, sampling)
    cache = feature_cache(cache_dir) if features is None else None
    m = load_model(model, sets, dtype, device, revision)
    count_text_tokens(m.tokenizer, [system, question], what="--system and the question")
    if features is not None:
        source = load_features(features, m)
    stream = not as_json and sys.stdout.isatty()
    answer, hit = Pipeline(m, cache).ask(
        source,
        question,
        sampling,
        system=system,
        gen=gen,
        on_token=TokenPrinter(m.tokenizer) if stream else None,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        out = answer.to_dict()
        out.update(model=m.name, feature_cache=None if cache is None else "hit" if hit else "miss")
        print(json.dumps(out))
    elif stream:
        print()
    else:
        print(answer.text)


@app.command()
@sampling_flags
def chat(
    video: str = VideoArg,
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    max_new_tokens: Optional[int] = MaxNewOpt,
    sets: Optional[list[str]] = SetOpt,
    gens: Optional[list[str]] = GenOpt,
    system: Optional[str] = SystemOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    timings: bool = typer.Option(False, "--timings", help="Show timings after every answer (or type /timings)."),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    sampling: SamplingOptions = SamplingOptions(),
):
    """Talk about VIDEO: encoded once, then any number of questions (/help for commands, Ctrl-D to quit)."""
    from .chat import run_chat
    from .pipeline import Pipeline

    gen = GenerationOptions.of(parse_pairs(gens, "--gen"), max_new_tokens=max_new_tokens)
    check_device(device)
    count_text_tokens(None, [system], what="--system")
    source = open_source(video, sampling)
    cache = feature_cache(cache_dir)
    m = load_model(model, sets, dtype, device, revision)
    count_text_tokens(m.tokenizer, [system], what="--system")
    session = Pipeline(m, cache).session(source, sampling, system, progress=sys.stderr.isatty())
    run_chat(session, gen=gen, show_timings=timings)


@app.command()
@sampling_flags
def encode(
    video: str = VideoArg,
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    sampling: SamplingOptions = SamplingOptions(),
):
    """Encode VIDEO once into compressed visual tokens (+ sampling plan) for `ask --features`."""
    from .features import check_output_path, file_hash, save_features
    from .pipeline import Pipeline

    check_output_path(out)
    check_device(device)
    source = open_source(video, sampling)
    m = load_model(model, sets, dtype, device, revision)
    _, visual, _ = Pipeline(m).visual(source, sampling, progress=sys.stderr.isatty())
    digest = file_hash(video) if Path(video).is_file() else None
    save_features(out, visual, m, source=str(video), source_hash=digest)
    t = visual.timings
    print(
        f"{out}: {visual.num_frames} frames -> {visual.num_tokens} visual tokens "
        f"(decode {t.get('decode', 0):.1f} s, encode {t.get('encode', 0):.1f} s)"
    )


@app.command()
@sampling_flags
def info(
    video: str = VideoArg,
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
    as_json: bool = JsonOpt,
    sampling: SamplingOptions = SamplingOptions(),
):
    """Describe VIDEO and what a model would see of it: frames, visual tokens, context, KV cache."""
    from .report import video_report

    source = open_source(video, sampling)
    has_model = model is not None or default_model_or_none()
    m = load_model(model, sets, dtype, revision=revision, weights=False) if has_model else None
    report = video_report(source, m, sampling)
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        report.print()


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the demo's files."),
    minutes: float = typer.Option(10.0, "--minutes", min=0.5, help="Length of the generated video."),
    seed: int = typer.Option(0, "--seed", help="Which haystack, needle and moment."),
):
    """Run the end-to-end demo: a generated video with an unseen needle, asked to the bundled model."""
    from .demo import run

    run(out, minutes, seed)


# The subsystems' commands: each module keeps its heavy imports inside the command function.
SUBSYSTEM_COMMANDS = {
    "train": train,
    "merge-lora": merge_lora,
    "serve": serve,
    "niah": niah,
    "eval": eval_command,
    "web": web,
}
for _name, _command in SUBSYSTEM_COMMANDS.items():
    app.command(_name)(_command)

# ------------------------------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
        return 0
    except LongvidError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # typer/click exits (--help)
        return int(e.code or 0)
    except Exception as e:  # a bug: one line for users, the traceback with LONGVID_DEBUG=1
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click usage errors (typer may vendor click)
            print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
            return 2
        if type(e).__name__ == "Abort":
            return 130
        if os.environ.get("LONGVID_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e} (set LONGVID_DEBUG=1 for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
