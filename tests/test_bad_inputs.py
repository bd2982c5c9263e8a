"""A corpus of bad inputs through the real CLI and the real server: each one is a clean refusal.

CLI: exit code 2, exactly one line on stderr (`error: ...`), no traceback. Server (one `longvid serve`
process): the right 4xx with OpenAI's JSON error shape and a one-line message; afterwards the server
still answers a normal request, and its RSS grew by at most 100 MB over the whole corpus.

Every CLI case runs in its own process executing `python -m longvid ARGS` (runpy, as `-m` does). To fit
~60 CLI cases into seconds rather than minutes, the processes are forked from one parent that has
already imported torch and longvid (a "zygote"); two cases also run as plain `python -m longvid`
subprocesses to show the two agree. Every input is generated here.

`--gen temperature=1e-300` is not here: a temperature below 1e-5 decodes greedily, in the CLI as in the
server (options.MIN_TEMPERATURE; test_pipeline.py checks it).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from longvid.assets import default_model_path  # noqa: E402
from longvid.serve.process import ServerProcess  # noqa: E402

TINY = default_model_path()


# ------------------------------------------------------------------------------------------ inputs on disk


def h264(path: Path, frames: int = 8, size: int = 32) -> Path:
    from longvid.data.synthetic import moving_shapes, write_video

    return write_video(path, moving_shapes(frames, size, size), fps=4, gop=4)


def huge_frame_video(path: Path) -> Path:
    """A ~190 KB file whose frames decode to 8000x8000."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width = stream.height = 8000
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "51", "preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(np.zeros((8000, 8000, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return path


def checkpoint(folder: Path, config=None, weights: bytes | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the bundled model with its config.json replaced (a dict is merged) or files dropped."""
    import shutil

    shutil.copytree(TINY, folder)
    for name in drop:
        (folder / name).unlink()
    if config is not None:
        base = json.loads((TINY / "config.json").read_text())
        text = (
            config
            if isinstance(config, str)
            else json.dumps({**base, **config} if isinstance(config, dict) else config)
        )
        (folder / "config.json").write_text(text)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def int8_checkpoint(folder: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    checkpoint(folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: (v * 10).to(torch.int8) for k, v in tensors.items()}, folder / "model.safetensors")
    return folder


def train_config(path: Path, text: str | None = None, **changes) -> Path:
    import yaml

    if text is None:
        cfg = {
            "name": "bad",
            "model": {
                "init": {
                    "vocab_size": 512,
                    "hidden": 32,
                    "layers": 1,
                    "heads": 4,
                    "kv_heads": 2,
                    "intermediate": 64,
                    "image_size": 64,
                    "patch": 8,
                    "vision_dim": 32,
                    "vision_depth": 1,
                    "vision_heads": 4,
                }
            },
            "trainable": {"llm": 1e-3},
            "data": {"synthetic": {"videos": 2, "images": 0, "frames": [4, 4], "size": 64}},
            "optim": {"global_batch_size": 2, "micro_batch_size": 1, "max_steps": 1},
        }
        for key, value in changes.items():
            section, _, name = key.partition("__")
            if name:
                cfg.setdefault(section, {})[name] = value
            else:
                cfg[section] = value
        text = yaml.safe_dump(cfg)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    good = h264(d / "good.mp4")
    f = {"good": good, "dir": d}
    (d / "empty.mp4").write_bytes(b"")
    (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    data = good.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 3])
    (d / "text.png").write_text("not an image")
    np.save(d / "flat.npy", np.zeros((4, 4), np.uint8))
    np.save(d / "rgba.npy", np.zeros((4, 16, 16, 4), np.uint8))
    np.save(d / "complex.npy", np.zeros((4, 16, 16, 3), np.complex64))
    np.save(d / "zero.npy", np.zeros((4, 0, 0, 3), np.uint8))
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "empty_dir").mkdir()
    (d / "junk_dir").mkdir()
    (d / "junk_dir" / "a.txt").write_text("x")
    (d / "fake.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    (d / "out_dir").mkdir()
    f["big"] = huge_frame_video(d / "big.mp4")
    # checkpoints
    f["ck_list"] = checkpoint(d / "ck_list", [1, 2])
    f["ck_json"] = checkpoint(d / "ck_json", "{not json")
    f["ck_string"] = checkpoint(d / "ck_string", {"hidden_size": "big"})
    f["ck_arch"] = checkpoint(d / "ck_arch", {"model_type": "gpt9", "architectures": ["Gpt9"], "mm_vision_tower": "x"})
    f["ck_shape"] = checkpoint(d / "ck_shape", {"hidden_size": 64})
    f["ck_noweights"] = checkpoint(d / "ck_noweights", drop=("model.safetensors",))
    f["ck_noconfig"] = checkpoint(d / "ck_noconfig", drop=("config.json",))
    f["ck_corrupt"] = checkpoint(d / "ck_corrupt", weights=b"\xff" * 100)
    f["ck_int8"] = int8_checkpoint(d / "ck_int8")
    # training configs
    f["tr_list"] = train_config(d / "list.yaml", "- 1\n- 2\n")
    f["tr_syntax"] = train_config(d / "syntax.yaml", "name: [unclosed\n")
    f["tr_unknown"] = train_config(d / "unknown.yaml", optim__lr=1)
    f["tr_negative"] = train_config(d / "negative.yaml", trainable={"llm": -1e-3})
    f["tr_string"] = train_config(d / "string.yaml", trainable={"llm": "fast"})
    f["tr_nodata"] = train_config(d / "nodata.yaml", data={"files": [str(d / "missing.jsonl")]})
    f["tr_ok"] = train_config(d / "ok.yaml")
    return f


# ------------------------------------------------------------------------------------------ the CLI

Q = "What colour is it?"
HUGE = "word " * 20_000  # 100 KB: over the text cap, under Linux's 128 KB limit on one argument

CLI_CASES = [
    # media files
    ("missing file", ["ask", "{dir}/missing.mp4", Q]),
    ("empty file", ["ask", "{dir}/empty.mp4", Q]),
    ("random bytes", ["ask", "{dir}/noise.mp4", Q]),
    ("mp4 cut before its index", ["ask", "{dir}/cut.mp4", Q]),
    ("text named .png", ["ask", "{dir}/text.png", Q]),
    ("2-D array", ["ask", "{dir}/flat.npy", Q, "--fps", "1"]),
    ("RGBA array", ["ask", "{dir}/rgba.npy", Q, "--fps", "1"]),
    ("complex array", ["ask", "{dir}/complex.npy", Q, "--fps", "1"]),
    ("0x0 frames", ["ask", "{dir}/zero.npy", Q, "--fps", "1"]),
    ("pickled object array", ["ask", "{dir}/objects.npy", Q, "--fps", "1"]),
    ("empty frame folder", ["ask", "{dir}/empty_dir", Q]),
    ("folder without images", ["ask", "{dir}/junk_dir", Q]),
    ("features: not ours", ["ask", "--features", "{dir}/fake.safetensors", Q]),
    ("features: missing", ["ask", "--features", "{dir}/missing.safetensors", Q]),
    ("info on a missing file", ["info", "{dir}/missing.mp4"]),
    ("encode -o a folder", ["encode", "{good}", "-o", "{dir}/out_dir"]),
    # option values
    ("--max-frames 0", ["ask", "{good}", Q, "--max-frames", "0"]),
    ("--max-frames -1", ["ask", "{good}", Q, "--max-frames", "-1"]),
    ("--fps 0", ["ask", "{good}", Q, "--fps", "0"]),
    ("--fps inf", ["ask", "{good}", Q, "--fps", "inf"]),
    ("--start -5", ["ask", "{good}", Q, "--start", "-5"]),
    ("--start nan", ["ask", "{good}", Q, "--start", "nan"]),
    ("--start 1e308", ["ask", "{good}", Q, "--start", "1e308"]),
    ("--num-frames 0", ["ask", "{good}", Q, "--num-frames", "0"]),
    ("--num-frames 1e9", ["info", "{good}", "--num-frames", "1000000000"]),  # refused before any list is built
    ("--input-fps 0", ["ask", "{dir}/zero.npy", Q, "--input-fps", "0"]),
    ("--end before --start", ["ask", "{good}", Q, "--start", "1.5", "--end", "0.5"]),
    ("--gen temperature=-1", ["ask", "{good}", Q, "--gen", "temperature=-1"]),
    ("--gen top_p=2", ["ask", "{good}", Q, "--gen", "top_p=2"]),
    ("--gen nonsense=3", ["ask", "{good}", Q, "--gen", "nonsense=3"]),
    ("--gen without =", ["ask", "{good}", Q, "--gen", "temperature"]),
    ("--set unknown key", ["ask", "{good}", Q, "--set", "no_such_key=1"]),
    ("--set hidden_size=-1", ["ask", "{good}", Q, "--set", "hidden_size=-1"]),
    ("--set without =", ["ask", "{good}", Q, "--set", "x"]),
    ("--dtype float64", ["ask", "{good}", Q, "--dtype", "float64"]),
    ("--device tpu:7", ["ask", "{good}", Q, "--device", "tpu:7"]),
    ("--max-new-tokens abc", ["ask", "{good}", Q, "--max-new-tokens", "abc"]),
    ("huge --system", ["ask", "{good}", Q, "--system", HUGE]),
    ("huge question", ["ask", "{good}", HUGE]),
    ("huge --system in chat", ["chat", "{good}", "--system", HUGE]),
    # checkpoints
    ("missing checkpoint folder", ["ask", "{good}", Q, "-m", "{dir}/nowhere"]),
    ("folder without config.json", ["ask", "{good}", Q, "-m", "{dir}/ck_noconfig"]),
    ("config.json is a list", ["ask", "{good}", Q, "-m", "{dir}/ck_list"]),
    ("config.json is not JSON", ["ask", "{good}", Q, "-m", "{dir}/ck_json"]),
    ("a string where a number belongs", ["ask", "{good}", Q, "-m", "{dir}/ck_string"]),
    ("unknown architecture", ["ask", "{good}", Q, "-m", "{dir}/ck_arch"]),
    ("weights of another shape", ["ask", "{good}", Q, "-m", "{dir}/ck_shape"]),
    ("no weights file", ["ask", "{good}", Q, "-m", "{dir}/ck_noweights"]),
    ("corrupt weights", ["ask", "{good}", Q, "-m", "{dir}/ck_corrupt"]),
    ("int8 weights", ["ask", "{good}", Q, "-m", "{dir}/ck_int8"]),
    ("malformed hub id", ["ask", "{good}", Q, "-m", "owner/name/../up"]),
    ("uncached hub id (offline)", ["ask", "{good}", Q, "-m", "nobody/nothing/sub", "--revision", "v9"]),
    # training configs
    ("training config missing", ["train", "{dir}/missing.yaml"]),
    ("training config is a list", ["train", "{tr_list}"]),
    ("training config syntax error", ["train", "{tr_syntax}"]),
    ("unknown training setting", ["train", "{tr_unknown}"]),
    ("negative learning rate", ["train", "{tr_negative}", "-o", "{dir}/run_neg"]),
    ("learning rate is a string", ["train", "{tr_string}", "-o", "{dir}/run_str"]),
    ("training data file missing", ["train", "{tr_nodata}", "-o", "{dir}/run_nodata"]),
    ("--nproc 0", ["train", "{tr_ok}", "--nproc", "0", "-o", "{dir}/run_nproc"]),
    ("--max-steps -1", ["train", "{tr_ok}", "--max-steps", "-1", "-o", "{dir}/run_steps"]),
    ("--set lr below zero", ["train", "{tr_ok}", "--set", "trainable.llm=-1", "-o", "{dir}/run_set"]),
    # NIAH
    ("niah --trials 0", ["niah", "--trials", "0", "--out", "{dir}/niah"]),
    ("niah bad --frames", ["niah", "--frames", "a,b", "--out", "{dir}/niah2"]),
]

ZYGOTE = r"""
import json, os, runpy, signal, sys, traceback
import longvid.cli, longvid.models, longvid.train.engine  # the heavy imports, once
cases = json.loads(sys.stdin.read())
codes = []
for i, case in enumerate(cases):
    out, err = case["out"], case["err"]
    pid = os.fork()
    if pid == 0:
        signal.alarm(60)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = ["longvid", *case["args"]]
        code = 0
        try:
            runpy.run_module("longvid", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def expand(args: list[str], files: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in files.items()}) if "{" in a else a for a in args]


@pytest.fixture(scope="module")
def cli_results(files, tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Every CLI case at once: {name: (exit code, stdout, stderr)}."""
    d = tmp_path_factory.mktemp("cli")
    cases, names = [], []
    for case in CLI_CASES:
        if hasattr(case, "marks") and any(m.kwargs.get("run") is False for m in case.marks):
            continue
        name, args = case.values if hasattr(case, "values") else case
        names.append(name)
        cases.append(
            {"args": expand(args, files), "out": str(d / f"{len(cases)}.out"), "err": str(d / f"{len(cases)}.err")}
        )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_CACHE": str(d / "hub"),
    }
    run = subprocess.run(
        [sys.executable, "-c", ZYGOTE], input=json.dumps(cases), capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    codes = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        name: (code, Path(c["out"]).read_text(errors="replace"), Path(c["err"]).read_text(errors="replace"))
        for name, code, c in zip(names, codes, cases)
    }


def assert_one_line_refusal(code: int, err: str, what: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, f"{what}: traceback\n{err[-2000:]}"
    assert code == 2, f"{what}: exit code {code}, stderr:\n{err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: stderr is not one error line:\n{err[-2000:]}"


@pytest.mark.parametrize("name, args", CLI_CASES)
def test_cli_refuses_cleanly(cli_results, name, args):
    code, _, err = cli_results[name]
    assert_one_line_refusal(code, err, name)


def test_zygote_and_plain_subprocess_agree(files, cli_results):
    """The forked cases behave as `python -m longvid` itself does (checked on one of them)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("int8 weights",):
        args = expand(dict((c.values if hasattr(c, "values") else c) for c in CLI_CASES)[name], files)
        run = subprocess.run(
            [sys.executable, "-m", "longvid", *args], capture_output=True, text=True, env=env, timeout=180
        )
        assert (run.returncode, run.stderr) == (cli_results[name][0], cli_results[name][2])


def test_the_corpus_is_big_enough():
    assert len(CLI_CASES) + len(SERVER_CASES) > 100 and len(CLI_CASES) >= 30 and len(SERVER_CASES) >= 30  # README
    assert len({c.values[0] if hasattr(c, "values") else c[0] for c in CLI_CASES}) == len(CLI_CASES)


# ------------------------------------------------------------------------------------------ the server

MODEL = "tiny"


def video_part(url: str, **extra) -> dict:
    return {"type": "video_url", "video_url": {"url": url}, **extra}


def chat(content, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}


def data_url(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def good_request(files) -> dict:
    return chat([video_part(f"file://{files['root_link']}/good.mp4"), {"type": "text", "text": Q}])


def _cases(files) -> list:
    """(name, body or raw bytes, expected status), built from the module's files."""
    root = files["root_link"]
    good = f"file://{root}/good.mp4"
    text = {"type": "text", "text": Q}
    ok = good_request(files)
    many = {"model": MODEL, "messages": [{"role": "user", "content": "a"}] * 10_000}
    return [
        ("not JSON", b"{nope", 400),
        ("a JSON list", b"[1, 2]", 400),
        ("no messages", {"model": MODEL}, 400),
        ("empty messages", {"model": MODEL, "messages": []}, 400),
        ("10,000 one-character messages", many, 400),
        ("too much text", chat([video_part(good), {"type": "text", "text": HUGE}]), 400),
        ("unknown model", {**ok, "model": "other"}, 404),
        ("no media", chat([text]), 400),
        ("two videos", chat([video_part(good), video_part(good), text]), 400),
        ("file outside the root", chat([video_part("file:///etc/passwd"), text]), 403),
        ("file traversal", chat([video_part(f"file://{root}/../secret.mp4"), text]), 403),
        ("file missing under the root", chat([video_part(f"file://{root}/missing.mp4"), text]), 400),
        ("data: not base64", chat([video_part("data:video/mp4,abc"), text]), 400),
        ("data: broken base64", chat([video_part("data:video/mp4;base64,@@@"), text]), 400),
        ("data: text/plain", chat([video_part("data:text/plain;base64,aGk="), text]), 400),
        ("data: random bytes", chat([video_part(data_url(files["dir"] / "noise.mp4")), text]), 400),
        ("data: 8000x8000 frames", chat([video_part(data_url(files["big"])), text]), 413),
        ("ftp URL", chat([video_part("ftp://host/v.mp4"), text]), 400),
        ("loopback URL", chat([video_part("http://127.0.0.1:1/x.mp4"), text]), 403),
        ("port out of range", chat([video_part("http://127.0.0.1:99999/x.mp4"), text]), 400),
        ("6to4 loopback", chat([video_part("http://[2002:7f00:1::]/x.mp4"), text]), 403),
        ("NAT64 link-local", chat([video_part("http://[64:ff9b::a9fe:a9fe]/x.mp4"), text]), 403),
        ("nframes 0", chat([video_part(good, nframes=0), text]), 400),
        ("nframes 1e9", chat([video_part(good, nframes=10**9), text]), 400),
        ("video_start 1e308", chat([video_part(good, video_start=1e308), text]), 400),
        ("video_end before video_start", chat([video_part(good, video_start=2, video_end=1), text]), 400),
        ("typo in a part key", chat([video_part(good, nframe=4), text]), 400),
        ("temperature -1", {**ok, "temperature": -1}, 400),
        ("top_p 2", {**ok, "top_p": 2}, 400),
        ("n 2", {**ok, "n": 2}, 400),
        ("max_tokens 0", {**ok, "max_tokens": 0}, 400),
        ("seed a string", {**ok, "seed": "abc"}, 400),
        ("17 stop strings", {**ok, "stop": [str(i) for i in range(17)]}, 400),
        ("lone surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400),
        ("video as image_url", chat([{"type": "image_url", "image_url": {"url": data_url(files["good"])}}, text]), 400),
        (
            "assistant holds the video",
            {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [video_part(good)]},
                    {"role": "user", "content": Q},
                ],
            },
            400,
        ),
        (
            "last message from the assistant",
            {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": [video_part(good), text]},
                    {"role": "assistant", "content": "x"},
                ],
            },
            400,
        ),
        ("messages not a list", {"model": MODEL, "messages": "hi"}, 400),
    ]


PENDING_SERVER: set[str] = set()
SERVER_CASES = [
    (name) if name in PENDING_SERVER else name
    for name in [
        "not JSON",
        "a JSON list",
        "no messages",
        "empty messages",
        "10,000 one-character messages",
        "too much text",
        "unknown model",
        "no media",
        "two videos",
        "file outside the root",
        "file traversal",
        "file missing under the root",
        "data: not base64",
        "data: broken base64",
        "data: text/plain",
        "data: random bytes",
        "data: 8000x8000 frames",
        "ftp URL",
        "loopback URL",
        "port out of range",
        "6to4 loopback",
        "NAT64 link-local",
        "nframes 0",
        "nframes 1e9",
        "video_start 1e308",
        "video_end before video_start",
        "typo in a part key",
        "temperature -1",
        "top_p 2",
        "n 2",
        "max_tokens 0",
        "seed a string",
        "17 stop strings",
        "lone surrogate",
        "video as image_url",
        "assistant holds the video",
        "last message from the assistant",
        "messages not a list",
    ]
]


@pytest.fixture(scope="module")
def server(files):
    root = files["dir"] / "root"
    root.mkdir()
    (root / "good.mp4").write_bytes(files["good"].read_bytes())
    (files["dir"] / "secret.mp4").write_bytes(b"outside")
    files["root_link"] = files["dir"] / "root-link"  # the root given through a symlink (README URLs use it)
    os.symlink(root, files["root_link"])
    with ServerProcess(
        TINY,
        "--served-model-name",
        MODEL,
        "--media-root",
        files["root_link"],
        "--allow-remote-media",
        "--fetch-timeout",
        "2",
        "--max-media-mb",
        "2",
    ) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            first = client.post("/v1/chat/completions", json=good_request(files))  # warm: the RSS baseline
            assert first.status_code == 200, first.text
            srv.client, srv.cases = client, {c[0]: c for c in _cases(files)}
            srv.rss_before = psutil.Process(srv.pid).memory_info().rss
            yield srv


def assert_error(response: httpx.Response, status: int, what: str) -> None:
    assert response.status_code == status, f"{what}: {response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json"), f"{what}: {response.text[:300]}"
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"} and error["type"], f"{what}: {error}"
    assert "\n" not in error["message"] and "Traceback" not in response.text, f"{what}: {error['message']}"


@pytest.mark.parametrize("name", SERVER_CASES)
def test_server_refuses_cleanly(server, name):
    _, body, status = server.cases[name]
    started = time.perf_counter()
    if isinstance(body, bytes):
        r = server.client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        r = server.client.post("/v1/chat/completions", json=body)
    assert_error(r, status, name)
    assert time.perf_counter() - started < 10, f"{name}: took {time.perf_counter() - started:.1f} s"


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
    ],
    ids=["Content-Length abc", "Content-Length too large"],
)
def test_malformed_http_gets_json(server, raw, status):
    got, body = raw_request(server.port, raw)
    assert got == status and json.loads(body)["error"]["message"], body


def test_wrong_routes_get_json(server):
    assert_error(server.client.get("/v1/no/such/route"), 404, "unknown route")
    assert_error(server.client.put("/v1/chat/completions", json={}), 405, "wrong method")


def test_server_still_answers_and_did_not_grow(server, files):
    """Runs after the corpus (file order): a normal request works and RSS grew < 100 MB."""
    r = server.client.post("/v1/chat/completions", json=good_request(files))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text
    grown = (psutil.Process(server.pid).memory_info().rss - server.rss_before) / 2**20
    print(f"server RSS growth over the corpus: {grown:.1f} MiB")
    assert grown < 100, f"the server grew by {grown:.0f} MiB"


def raw_request(port: int, raw: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and len(data.split(b"\r\n\r\n", 1)[1]) >= _length(data):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def test_the_readme_promises_the_limits_the_code_enforces():
    """The numbers in the README's Promises section are the code's constants and defaults."""
    import inspect
    import re

    from longvid.limits import MAX_MESSAGES, MAX_TEXT_CHARS, MAX_TEXT_TOKENS
    from longvid.serve import commands
    from longvid.serve.app import ServerSettings
    from longvid.serve.media import MAX_IMAGE_PIXELS, MAX_VIDEO_PIXELS, MediaPolicy

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    promises = readme.split("## Promises", 1)[1].split("\n## ", 1)[0]
    settings, policy = ServerSettings("x"), MediaPolicy()
    defaults = {
        p.name: p.default.default
        for p in inspect.signature(commands.serve).parameters.values()
        if hasattr(p.default, "default")
    }
    said = {
        f"At most {MAX_TEXT_TOKENS} text tokens": True,
        f"more than {MAX_TEXT_CHARS}\n  characters": True,
        f"at most {MAX_MESSAGES} messages": True,
        f"{settings.text_tokens_total // settings.max_text_tokens} requests' worth": True,
        f"`--max-media-mb` (default {defaults['max_media_mb']:g})": policy.max_bytes == 32 << 20,
        f"at most {policy.max_redirects} redirects": True,
        f"deadline (default {defaults['fetch_timeout']:g} s)": True,
        f"images over {MAX_IMAGE_PIXELS} pixels": True,
        f"`--frame-limit` frames (default {defaults['frame_limit']})": settings.frame_limit == defaults["frame_limit"],
        f"(default {defaults['max_concurrency']}) and `--max-queue` waiting\n  (default {defaults['max_queue']})": True,
        f"(default {defaults['timeout']:g} s)": True,
    }
    flat = re.sub(r"\s+", " ", promises)
    for text, consistent in said.items():
        assert consistent and re.sub(r"\s+", " ", text) in flat, f"README Promises should say: {text!r}"
    w, h = re.search(r"Frames larger than (\d+)x(\d+) pixels", flat).groups()
    assert int(w) * int(h) == MAX_VIDEO_PIXELS
