"""The one pipeline: imports point downward, values are checked once at the edge, features never go stale."""

from __future__ import annotations

import ast
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import longvid
from longvid.cli import main
from longvid.errors import ConfigError
from longvid.features import FeatureCache, load_features, save_features
from longvid.options import MAX_FRAMES, GenerationOptions, SamplingOptions

SRC = Path(longvid.__file__).resolve().parent


# ------------------------------------------------------------------------------------------ imports


def _module_name(path: Path) -> str:
    parts = ["longvid", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules `path` imports, at module level and inside functions (not under `if TYPE_CHECKING:`)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skipped = {id(n) for node in guarded for child in node.body for n in ast.walk(child)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x` / `from .pkg import module`
                if f"{target}.{alias.name}" in modules:
                    out.add(f"{target}.{alias.name}")
                elif target in modules:
                    out.add(target)
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args:
            if isinstance(node.args[0], ast.Constant) and node.args[0].value in modules:
                out.add(node.args[0].value)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and graph["longvid.cli"] >= {"longvid.flags", "longvid.serve.commands"}
    assert "longvid.pipeline" in graph["longvid.models.base"]  # function-level imports count too
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_main_imports_the_cli():
    importers = sorted(m for m, deps in import_graph().items() if "longvid.cli" in deps)
    assert importers == ["longvid.__main__"]


# ------------------------------------------------------------------------------------------ fingerprints


@pytest.fixture
def digest_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGVID_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_fingerprint_follows_the_weights_contents(tiny_checkpoint, tmp_path, short_video, digest_home):
    import shutil

    from longvid.tiny import make_checkpoint

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    other = make_checkpoint(tmp_path / "seed1", config, seed=1)  # same shape, other weights
    copy = Path(shutil.copytree(tiny_checkpoint, tmp_path / "copy"))  # same weights, other folder
    a, b, a2 = longvid.load(tiny_checkpoint), longvid.load(other), longvid.load(copy)
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == a2.fingerprint()
    assert len(json.loads((digest_home / "weight-digests.json").read_text())) >= 2  # remembered on disk
    assert longvid.load(tiny_checkpoint, dtype="bfloat16").fingerprint() != a.fingerprint()

    cache = FeatureCache(tmp_path / "cache")
    first = a.session(short_video, cache=cache, num_frames=8)
    second = b.session(short_video, cache=cache, num_frames=8)  # must not reuse model a's tokens
    again = a2.session(short_video, cache=cache, num_frames=8)
    assert (first.stats.cache_hit, second.stats.cache_hit, again.stats.cache_hit) == (False, False, True)
    assert not torch.equal(first.visual.tokens, second.visual.tokens)
    path = save_features(tmp_path / "a.safetensors", first.visual, a)
    with pytest.raises(longvid.LongvidError, match="different model, weights or config"):
        load_features(path, b)
    assert torch.equal(load_features(path, a2).tokens, first.visual.tokens)


# ------------------------------------------------------------------------------------------ options


def test_options_are_checked_once_with_one_set_of_limits():
    assert SamplingOptions.of({"num_frames": 8.0}, start=1).num_frames == 8
    assert SamplingOptions(fps=1e9).fps == 1e9  # faster than the video: every frame
    for bad in (
        {"num_frames": 0},
        {"num_frames": 10**9},
        {"max_frames": -1},
        {"fps": 0},
        {"fps": math.inf},
        {"start": -5},
        {"start": math.nan},
        {"start": 1e308},
        {"input_fps": 0},
        {"num_frames": 2.5},
        {"start": 3, "end": 2},
        {"nframes": 4},
        {"timestamps": "1,2"},
    ):
        with pytest.raises(ConfigError):
            SamplingOptions.of(bad)
    for bad in (
        {"temperature": -1},
        {"temperature": math.nan},
        {"top_p": 2},
        {"top_p": 0},
        {"nonsense": 3},
        {"max_new_tokens": 0},
        {"do_sample": "yes"},
        {"repetition_penalty": 0},
    ):
        with pytest.raises(ConfigError):
            GenerationOptions.of(bad)
    from longvid.serve.schemas import ChatCompletionRequest, SamplingKnobs

    with pytest.raises(ValueError):
        SamplingKnobs(nframes=MAX_FRAMES + 1)
    with pytest.raises(ValueError):
        SamplingKnobs(video_start=1e308)
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], temperature=1e-300)
    assert GenerationOptions.of(request.generation()).do_sample is False  # accepted, and decoded greedily


def test_tiny_temperature_decodes_greedily(tiny_model, short_video):
    visual = tiny_model.session(short_video, num_frames=8).visual
    greedy = tiny_model.ask(visual, "What moves?", max_new_tokens=6, gen={"do_sample": False})
    tiny = tiny_model.ask(visual, "What moves?", max_new_tokens=6, gen={"do_sample": True, "temperature": 1e-300})
    assert len(greedy.token_ids) > 0 and tiny.token_ids == greedy.token_ids
    with pytest.raises(ConfigError, match="num_frames"):
        tiny_model.ask(short_video, "q", num_frames=0)


def _one_line(code, err, needle):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (code, err)
    assert "Traceback" not in err


def test_bad_values_are_one_line_and_exit_2(tiny_checkpoint, short_video, tmp_path, capfd):
    ask = ["ask", str(short_video), "q", "--model", str(tiny_checkpoint)]
    arrays = {
        "rgba": np.zeros((4, 8, 8, 4), np.uint8),
        "empty": np.zeros((4, 0, 0, 3), np.uint8),
        "complex": np.zeros((4, 8, 8, 3), np.complex64),
    }
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    cases = [
        (ask + ["--gen", "temperature=-1"], "temperature"),
        (ask + ["--gen", "top_p=2"], "top_p"),
        (ask + ["--gen", "nonsense=3"], "nonsense"),
        (ask + ["--num-frames", "0"], "num_frames"),
        (ask + ["--num-frames", "1000000000"], "num_frames"),
        (ask + ["--max-frames", "0"], "max_frames"),
        (ask + ["--max-frames", "-1"], "max_frames"),
        (ask + ["--fps", "0"], "fps"),
        (ask + ["--fps", "inf"], "fps"),
        (ask + ["--start", "-5"], "start"),
        (ask + ["--start", "nan"], "start"),
        (ask + ["--start", "1e308"], "start"),
        (ask + ["--input-fps", "0"], "input_fps"),
        (ask + ["--set", "nonsense=1"], "nonsense"),
        (ask + ["--set", "hidden_size=wide"], "hidden_size"),
        (ask + ["--set", "llm_compress_layer_list=[2,"], "llm_"),
        (ask + ["--set", "hidden_size=-1"], "hidden_size"),
        (ask + ["--device", "tpu:7"], "tpu"),
        (ask + ["--cache-dir", str(tmp_path / "file")], "not a folder"),
        (ask + ["--bogus"], "--bogus"),
        (ask + ["--num-frames", "many"], "--num-frames"),
        *[(["ask", str(tmp_path / f"{n}.npy"), "q", "--model", str(tiny_checkpoint)], "expected") for n in arrays],
        (["encode", str(short_video), "-o", str(tmp_path / "folder"), "--model", str(tiny_checkpoint)], "folder"),
        (["encode", str(short_video), "-o", "/proc/longvid/x.safetensors", "--model", str(tiny_checkpoint)], "/proc"),
    ]
    if not torch.cuda.is_available():
        cases.append((ask + ["--device", "cuda"], "CUDA"))
    for args, needle in cases:
        code = main(args)
        _one_line(code, capfd.readouterr().err, needle)


def test_chat_survives_binary_input(tiny_checkpoint, short_video, monkeypatch, capfd):
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe\x00\x81 what?\nWhy?\n"), encoding="utf-8")  # strict decoding
    monkeypatch.setattr(sys, "stdin", stdin)
    code = main(
        ["chat", str(short_video), "--model", str(tiny_checkpoint), "--num-frames", "8", "--max-new-tokens", "3"]
    )
    out, err = capfd.readouterr()
    assert code == 0 and "Traceback" not in err and "error" not in err, err
    assert out.count(">>> ") == 3  # two questions answered, then the end of input
