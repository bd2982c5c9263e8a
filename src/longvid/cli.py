"""The `longvid` command line. Every user mistake ends as one line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import ConfigError, LongvidError
from .limits import count_text_tokens

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Understand hour-long videos with multimodal LLMs.")




@app.callback()
def _root() -> None:
    """Understand hour-long videos with multimodal LLMs."""


# ------------------------------------------------------------------------------------------ helpers


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


def default_model() -> str:
    from .assets import default_model_path

    path = default_model_path()
    if path is None:
        raise ConfigError("no --model given and no default model is installed")
    return str(path)


def load_model(model: str | None, sets: list[str] | None, dtype: str, device: str, revision: str | None = None):
    from .models import load

    return load(model or default_model(), device=device, dtype=dtype, overrides=parse_pairs(sets, "--set"),
                revision=revision)


class TokenPrinter:
    """Prints tokens as they come, holding back bytes that do not yet form whole characters."""

    def __init__(self, tokenizer, stream=None):
        self.tokenizer, self.stream = tokenizer, stream or sys.stdout
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        self.stream.write(text[len(self.shown):])
        self.stream.flush()
        self.shown = text


# ------------------------------------------------------------------------------------------ commands

ModelOpt = typer.Option(None, "--model", "-m", help="Checkpoint folder or hub id: owner/name, owner/name/subfolder "
                        "(default: the bundled tiny model).")
RevisionOpt = typer.Option(None, "--revision", help="Hub branch, tag or commit of --model.")
SetOpt = typer.Option(None, "--set", help="Override a config.json key, e.g. --set mm_llm_compress=true.")
GenOpt = typer.Option(None, "--gen", help="Override a generation setting, e.g. --gen do_sample=false.")
DtypeOpt = typer.Option("float32", "--dtype", help="float32 or bfloat16.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ...")


MaxFramesOpt = typer.Option(None, "--max-frames", help="Cap on sampled frames.")
FpsOpt = typer.Option(None, "--fps", help="Frames per second to sample; for .npy arrays and frame folders "
                      "(no frame rate of their own) their frame rate instead.")
NumFramesOpt = typer.Option(None, "--num-frames", help="Sample exactly N frames uniformly.")
InputFpsOpt = typer.Option(None, "--input-fps", help="Frame rate of the input (arrays, frame folders).")
StartOpt = typer.Option(None, "--start", help="Only look from this second on.")
EndOpt = typer.Option(None, "--end", help="Only look up to this second.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object.")
CacheDirOpt = typer.Option(None, "--cache-dir", envvar="LONGVID_CACHE_DIR",
                           help="Keep encoded videos here and reuse them (keyed by content, sampling and model).")
MaxNewOpt = typer.Option(None, "--max-new-tokens")
SystemOpt = typer.Option(None, "--system", help="Replace the default system prompt.")


def open_source(video: str, fps: float | None, input_fps: float | None):
    """Open VIDEO (before loading any weights, so bad paths fail fast); returns (video, sampling fps)."""
    from .video import open_video

    p = Path(video)
    if fps is not None and input_fps is None and (p.suffix.lower() == ".npy" or p.is_dir()):
        input_fps, fps = fps, None
    source = open_video(video, fps=input_fps)
    for warning in source.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return source, fps


@app.command()
def ask(
    video: str = typer.Argument(..., help="Video file, image, folder of frames, or .npy array [T,H,W,3]."),
    question: Optional[str] = typer.Argument(None),
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    features: Optional[Path] = typer.Option(None, "--features", help="Encoded video from `longvid encode` "
                                            "(then the only argument is the question)."),
    max_new_tokens: Optional[int] = MaxNewOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    fps: Optional[float] = FpsOpt,
    num_frames: Optional[int] = NumFramesOpt,
    input_fps: Optional[float] = InputFpsOpt,
    start: Optional[float] = StartOpt,
    end: Optional[float] = EndOpt,
    sets: Optional[list[str]] = SetOpt,
    gens: Optional[list[str]] = GenOpt,
    system: Optional[str] = SystemOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    as_json: bool = JsonOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Answer QUESTION about VIDEO (or about an encoded video: --features FILE QUESTION)."""
    from .features import load_features

    if features is not None:
        if question is not None:
            raise ConfigError("with --features, give only the question")
        question, source = video, None
    elif question is None:
        raise ConfigError("missing QUESTION")
    count_text_tokens(None, [system, question], what="--system and the question")
    if features is None:
        source, fps = open_source(video, fps, input_fps)
    m = load_model(model, sets, dtype, device, revision)
    count_text_tokens(m.tokenizer, [system, question], what="--system and the question")
    if features is not None:
        source = load_features(features, m)
    stream = not as_json and sys.stdout.isatty()
    printer = TokenPrinter(m.tokenizer) if stream else None
    sampling = dict(max_frames=max_frames, fps=fps, num_frames=num_frames, start=start, end=end)
    gen = parse_pairs(gens, "--gen")
    cache_state = None
    if cache_dir is not None and features is None:
        from .session import FeatureCache

        session = m.session(source, system=system, cache=FeatureCache(cache_dir), progress=sys.stderr.isatty(),
                            **sampling)
        cache_state = "hit" if session.stats.cache_hit else "miss"
        answer = session.ask(question, max_new_tokens=max_new_tokens, gen=gen, on_token=printer)
    else:
        answer = m.ask(source, question, max_new_tokens=max_new_tokens, gen=gen, system=system,
                       progress=sys.stderr.isatty(), on_token=printer, **sampling)
    if as_json:
        out = answer.to_dict()
        out.update(model=m.name, feature_cache=cache_state)
        print(json.dumps(out))
    elif stream:
        print()
    else:
        print(answer.text)


@app.command()
def chat(
    video: str = typer.Argument(..., help="Video file, image, folder of frames, or .npy array."),
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    max_new_tokens: Optional[int] = MaxNewOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    fps: Optional[float] = FpsOpt,
    num_frames: Optional[int] = NumFramesOpt,
    input_fps: Optional[float] = InputFpsOpt,
    start: Optional[float] = StartOpt,
    end: Optional[float] = EndOpt,
    sets: Optional[list[str]] = SetOpt,
    gens: Optional[list[str]] = GenOpt,
    system: Optional[str] = SystemOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    timings: bool = typer.Option(False, "--timings", help="Show timings after every answer (or type /timings)."),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Talk about VIDEO: encoded once, then any number of questions (/help for commands, Ctrl-D to quit)."""
    from .chat import run_chat
    from .session import FeatureCache

    count_text_tokens(None, [system], what="--system")
    source, fps = open_source(video, fps, input_fps)
    m = load_model(model, sets, dtype, device, revision)
    count_text_tokens(m.tokenizer, [system], what="--system")
    session = m.session(source, system=system, cache=FeatureCache(cache_dir), progress=sys.stderr.isatty(),
                        max_frames=max_frames, fps=fps, num_frames=num_frames, start=start, end=end)
    run_chat(session, max_new_tokens=max_new_tokens, gen=parse_pairs(gens, "--gen"), show_timings=timings)


@app.command()
def encode(
    video: str = typer.Argument(..., help="Video file, image, folder of frames, or .npy array."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    fps: Optional[float] = FpsOpt,
    num_frames: Optional[int] = NumFramesOpt,
    input_fps: Optional[float] = InputFpsOpt,
    start: Optional[float] = StartOpt,
    end: Optional[float] = EndOpt,
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Encode VIDEO once into compressed visual tokens (+ sampling plan) for `ask --features`."""
    from .features import file_hash, save_features

    source, fps = open_source(video, fps, input_fps)
    m = load_model(model, sets, dtype, device, revision)
    plan = m.sampling_plan(source, max_frames=max_frames, fps=fps, num_frames=num_frames, start=start, end=end)
    visual = m.encode(source, plan, progress=sys.stderr.isatty())
    digest = file_hash(video) if Path(video).is_file() else None
    save_features(out, visual, m, source=str(video), source_hash=digest)
    t = visual.timings
    print(f"{out}: {visual.num_frames} frames -> {visual.tokens.shape[0]} visual tokens "
          f"(decode {t.get('decode', 0):.1f} s, encode {t.get('encode', 0):.1f} s)")


@app.command()
def info(
    video: str = typer.Argument(..., help="Video file, image, folder of frames, or .npy array."),
    model: Optional[str] = ModelOpt,
    revision: Optional[str] = RevisionOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    fps: Optional[float] = FpsOpt,
    num_frames: Optional[int] = NumFramesOpt,
    input_fps: Optional[float] = InputFpsOpt,
    start: Optional[float] = StartOpt,
    end: Optional[float] = EndOpt,
    sets: Optional[list[str]] = SetOpt,
    dtype: str = DtypeOpt,
    as_json: bool = JsonOpt,
):
    """Describe VIDEO and what a model would see of it: frames, visual tokens, context, KV cache."""
    from .models import load
    from .report import video_report

    source, fps = open_source(video, fps, input_fps)
    m = None
    if model is not None or _default_model_or_none():
        m = load(model or default_model(), dtype=dtype, overrides=parse_pairs(sets, "--set"), weights=False,
                 revision=revision)
    report = video_report(source, m, max_frames=max_frames, fps=fps, num_frames=num_frames, start=start, end=end)
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        report.print()


def _default_model_or_none() -> str | None:
    from .assets import default_model_path

    path = default_model_path()
    return str(path) if path else None


@app.command()
def demo(out: Optional[Path] = typer.Option(None, "--out", help="Folder for the demo's files."),
         minutes: float = typer.Option(10.0, "--minutes", min=0.5, help="Length of the generated video."),
         seed: int = typer.Option(0, "--seed", help="Which haystack, needle and moment.")):
    """Run the end-to-end demo: a generated video with an unseen needle, asked to the bundled model."""
    from .demo import run

    run(out, minutes, seed)


# Commands that live beside their subsystem register themselves on `app` when imported
# (each module keeps its heavy imports inside the command functions).
PLUGIN_COMMANDS = ("longvid.train.commands", "longvid.serve.commands", "longvid.niah.commands")


def _load_plugin_commands() -> None:
    import importlib

    for name in PLUGIN_COMMANDS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not name.startswith(str(e.name)):
                raise


_load_plugin_commands()

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
    except SystemExit as e:  # typer/click exits (--help, usage errors)
        return int(e.code or 0)
    except Exception as e:  # a bug: one line for users, the traceback with LONGVID_DEBUG=1
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click usage errors (typer may vendor click)
            e.show()
            return int(e.exit_code)
        if type(e).__name__ == "Abort":
            return 130
        if os.environ.get("LONGVID_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e} (set LONGVID_DEBUG=1 for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
