"""`longvid serve` parts in-process: messages -> dialogue, text streaming with stop strings, the media
rules (local files, data URLs, downloads against a loopback HTTP server) and the admission queue."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import ipaddress
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from longvid.errors import InputError  # noqa: E402
from longvid.serve import media as media_mod  # noqa: E402
from longvid.serve.engine import TextStream  # noqa: E402
from longvid.serve.media import MediaPolicy, MediaRefused, MediaResolver, MediaTimeout, MediaTooLarge, public_address  # noqa: E402
from longvid.serve.schemas import ChatCompletionRequest, Dialogue  # noqa: E402
from longvid.serve.worker import Admission, QueueFull  # noqa: E402


def png_bytes(h: int = 24, w: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ messages


def request(messages, **extra) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": messages, **extra})


def video(url="file:///v.mp4", **knobs):
    return {"type": "video_url", "video_url": {"url": url}, **knobs}


def test_dialogue_maps_system_history_and_question():
    d = Dialogue.from_request(
        request(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [video(nframes=8), {"type": "text", "text": "What moves?"}]},
                {"role": "assistant", "content": "A square."},
                {"role": "user", "content": "What colour?"},
                {"role": "user", "content": [{"type": "text", "text": "And where?"}]},
            ]
        )
    )
    assert d.system == "Be brief."
    assert d.history == [("What moves?", "A square.")]
    assert d.question == "What colour?\nAnd where?"  # consecutive user messages are one turn
    assert d.media.kind == "video" and d.media.sampling["num_frames"] == 8


def test_sampling_spellings_and_precedence():
    d = Dialogue.from_request(
        request(
            [
                {
                    "role": "user",
                    "content": [video(video_start=1, video_end=3, max_frames=6), {"type": "text", "text": "?"}],
                }
            ],
            mm_processor_kwargs={"fps": 2, "num_frames": 12, "do_sample_frames": True},
        )
    )
    assert d.media.sampling == {"fps": 2, "num_frames": 12, "max_frames": 6, "start": 1, "end": 3}
    part = {"type": "video_url", "video_url": {"url": "file:///v.mp4", "fps": 0.5}, "nframes": 4}
    d = Dialogue.from_request(request([{"role": "user", "content": [part]}], mm_processor_kwargs={"num_frames": 12}))
    assert d.media.sampling["num_frames"] == 4 and d.media.sampling["fps"] == 0.5  # the part wins
    with pytest.raises(InputError, match="twice"):
        bad = {"type": "video_url", "video_url": {"url": "file:///v.mp4", "fps": 1}, "fps": 2}
        Dialogue.from_request(request([{"role": "user", "content": [bad]}]))


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "user", "content": "hi"}], "required"),
        ([{"role": "user", "content": [video(), video()]}], "exactly one"),
        (
            [
                {"role": "user", "content": [video()]},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": [video()]},
            ],
            "exactly one",
        ),
        ([{"role": "user", "content": [video()]}, {"role": "assistant", "content": "x"}], "last message"),
        ([{"role": "assistant", "content": "x"}, {"role": "user", "content": [video()]}], "start with a user"),
        ([{"role": "system", "content": [video()]}, {"role": "user", "content": "q"}], "only user messages"),
    ],
)
def test_dialogue_refusals(messages, match):
    with pytest.raises(InputError, match=match):
        Dialogue.from_request(request(messages))


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2},
        {"logprobs": True},
        {"tools": [{"type": "function"}]},
        {"stop": [""]},
        {"temperature": 3},
        {"max_tokens": 0},
        {"mm_processor_kwargs": {"max_pixels": 100}},
        {"mm_processor_kwargs": {"do_sample_frames": False}},
    ],
)
def test_request_refusals(extra):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        request([{"role": "user", "content": [video()]}], **extra)


def test_media_part_typos_are_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="nframe"):
        request([{"role": "user", "content": [video(nframe=8)]}])
    with pytest.raises(ValidationError):
        request([{"role": "user", "content": [video(video_start=3, video_end=1)]}])


def test_generation_overrides():
    msgs = [{"role": "user", "content": [video()]}]
    assert request(msgs).generation() == {}
    assert request(msgs, temperature=0).generation() == {"do_sample": False}
    assert request(msgs, temperature=1e-300).generation() == {"do_sample": False}  # would overflow the softmax
    assert request(msgs, temperature=0.7, top_p=0.9, seed=3).generation() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
    }
    assert request(msgs, stop="x").stop == ["x"] and request(msgs).stop == []
    assert request(msgs, max_tokens=5, max_completion_tokens=7).max_new_tokens == 7


# ------------------------------------------------------------------------------------------ text stream


class ByteTokenizer:
    """Each id is a byte string; decoding replaces broken UTF-8 like a byte-level BPE does."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def stream(pieces: list[bytes], stop=()) -> tuple[list[str], TextStream]:
    s = TextStream(ByteTokenizer(pieces), list(stop))
    deltas = []
    for i in range(len(pieces)):
        deltas.append(s.push(i))
        if s.stopped:
            break
    deltas.append(s.flush())
    return deltas, s


def test_stop_string_across_tokens_is_cut():
    deltas, s = stream([b"Hel", b"lo wo", b"rld"], stop=["o w"])
    assert s.stopped and s.text == "Hell" and "".join(deltas) == "Hell"
    assert len(s.ids) == 2  # generation ended at the token that completed the stop string


def test_possible_stop_prefix_is_held_back_then_released():
    deltas, s = stream([b"abc E", b"N", b"X"], stop=["END"])
    assert deltas == ["abc ", "", "ENX", ""] and not s.stopped


def test_split_utf8_and_leading_whitespace():
    deltas, s = stream([b" \n", b"caf", b"\xc3", b"\xa9!"])
    assert deltas == ["", "caf", "", "\u00e9!", ""] and s.text == "caf\u00e9!"


# ------------------------------------------------------------------------------------------ media rules


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        # IPv6 forms that tunnel to IPv4 are judged by the IPv4 address inside: 6to4, Teredo, NAT64
        ("2002:7f00:1::", False),
        ("2002:a00:1::1", False),
        ("2002:808:808::1", True),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, client 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),  # Teredo, server 65.54.227.120, client 8.8.8.8
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b::808:808", True),
        ("64:ff9b:1::a00:1", False),
    ],
)
def test_public_address(address, public):
    assert public_address(ipaddress.ip_address(address)) is public


@pytest.fixture
def root(tmp_path, short_video) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "v.mp4").write_bytes(short_video.read_bytes())
    (tmp_path / "secret.mp4").write_bytes(b"outside")
    os.symlink(tmp_path / "secret.mp4", root / "escape.mp4")
    os.symlink(root / "v.mp4", root / "sub" / "alias.mp4")
    return root


def resolver(root=None, tmp=None, **policy) -> MediaResolver:
    return MediaResolver(MediaPolicy(root, **policy), tmp or Path(root or "/tmp"))


def test_file_urls_stay_under_the_root(root):
    r = resolver(root)
    assert r.resolve(f"file://{root}/v.mp4", "video").source == root / "v.mp4"
    assert r.resolve(f"file://{root}/sub/alias.mp4", "video").source == root / "v.mp4"  # symlink inside: fine
    for url in (
        "file:///etc/passwd",
        f"file://{root}/../secret.mp4",
        f"file://{root}/%2e%2e/secret.mp4",
        f"file://{root}/escape.mp4",
        f"file://{root}/sub/../../secret.mp4",
    ):
        with pytest.raises(MediaRefused):
            r.resolve(url, "video")
    for url in (f"file://{root}/missing.mp4", f"file://{root}/sub", "file://v.mp4", f"file://{root}/v%00.mp4"):
        with pytest.raises(InputError) as e:
            r.resolve(url, "video")
        assert not isinstance(e.value, MediaRefused)
    with pytest.raises(MediaRefused, match="--media-root"):
        resolver(None).resolve(f"file://{root}/v.mp4", "video")


def test_root_given_through_a_symlink_and_capped_image_files(root, tmp_path):
    link = tmp_path / "link-to-root"
    os.symlink(root, link)
    (root / "big.png").write_bytes(png_bytes() + b"\0" * 4096)
    r = resolver(link, max_bytes=2048)
    assert r.resolve(f"file://{link}/v.mp4", "video").source == root / "v.mp4"  # the URL as the README shows
    assert r.resolve(f"file://{root}/v.mp4", "video").source == root / "v.mp4"
    with pytest.raises(MediaRefused):
        r.resolve(f"file://{link}/escape.mp4", "video")
    with pytest.raises(MediaTooLarge, match="image file is larger"):
        r.resolve(f"file://{link}/big.png", "image")


def test_data_urls(tmp_path, short_video):
    r = resolver(None, tmp_path, max_bytes=1 << 20)
    m = r.resolve("data:video/mp4;base64," + base64.b64encode(short_video.read_bytes()).decode(), "video")
    assert m.temp is not None and m.temp.read_bytes() == short_video.read_bytes() and m.temp.parent == tmp_path
    m.cleanup()
    assert not m.temp.exists()
    image = r.resolve("data:image/png;base64," + base64.b64encode(png_bytes()).decode(), "image")
    assert isinstance(image.source, np.ndarray) and image.source.shape == (24, 32, 3) and image.temp is None
    for url, kind in (
        ("data:video/mp4,abc", "video"),
        ("data:video/mp4;base64,@@@", "video"),
        ("data:text/plain;base64,aGk=", "video"),
        ("data:video/mp4;base64,AAAA", "image"),
        ("data:image/png;base64,aGVsbG8=", "image"),
        ("ftp://host/v.mp4", "video"),
    ):
        with pytest.raises(InputError):
            r.resolve(url, kind)
    with pytest.raises(MediaTooLarge):
        r.resolve("data:video/mp4;base64," + "A" * (2 << 20), "video")
    with pytest.raises(MediaRefused, match="allow-remote-media"):
        r.resolve("https://example.com/v.mp4", "video")


class Handler(BaseHTTPRequestHandler):
    video = b""
    hits: list[str] = []

    def do_GET(self):
        Handler.hits.append(self.path)
        routes = {
            "/to-video": "/video.mp4",
            "/to-private": "http://10.1.2.3/x.mp4",
            "/to-file": "file:///etc/passwd",
            "/loop": "/loop",
        }
        if self.path in routes:
            self.send_response(302)
            self.send_header("Location", routes[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/video.mp4":
            self._send(self.video, "video/mp4")
        elif self.path == "/image":
            self._send(png_bytes(), "image/png")
        elif self.path == "/big":
            self._send(b"\0" * (3 << 20), "video/mp4")
        elif self.path == "/big-unsized":  # no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            for _ in range(48):
                self.wfile.write(b"\0" * (64 << 10))
            self.close_connection = True
        elif self.path == "/drip":  # headers at once, then a byte every 0.3 s for 3 s
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.3)
        elif self.path == "/slow":
            time.sleep(2)
            self._send(self.video, "video/mp4")
        else:
            self.send_error(404)

    def _send(self, body: bytes, ctype: str):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # clients that hang up early are part of the tests
        pass


@pytest.fixture
def http_server(short_video):
    Handler.video, Handler.hits = short_video.read_bytes(), []
    server = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def loopback_only(ip) -> bool:
    return ip == ipaddress.ip_address("127.0.0.1")


def test_download_rules(http_server, tmp_path, short_video):
    r = resolver(None, tmp_path, allow_remote=True, max_bytes=1 << 20, fetch_timeout=1.0, address_allowed=loopback_only)
    m = r.resolve(f"{http_server}/to-video", "video")  # a redirect to an allowed address is followed
    assert m.source.read_bytes() == short_video.read_bytes()
    m.cleanup()
    assert isinstance(r.resolve(f"{http_server}/image", "image").source, np.ndarray)
    with pytest.raises(MediaRefused):
        r.resolve(f"{http_server}/to-private", "video")  # the redirect target is checked too
    for path, error in (
        ("/to-file", InputError),
        ("/loop", InputError),
        ("/missing", InputError),
        ("/big", MediaTooLarge),
        ("/big-unsized", MediaTooLarge),
        ("/slow", MediaTimeout),
    ):
        with pytest.raises(error):
            r.resolve(f"{http_server}{path}", "video")
    assert list(tmp_path.iterdir()) == []  # no temp file is left behind by a failed download


def test_default_policy_never_connects_to_loopback(http_server, tmp_path):
    r = resolver(None, tmp_path, allow_remote=True)
    port = http_server.rsplit(":", 1)[1]
    for url in (
        f"{http_server}/video.mp4",
        f"http://localhost:{port}/video.mp4",
        f"http://[::1]:{port}/video.mp4",
        f"http://2130706433:{port}/video.mp4",
    ):
        with pytest.raises(MediaRefused):
            r.resolve(url, "video")
    assert Handler.hits == []


def test_every_resolved_address_must_be_allowed(monkeypatch, tmp_path):
    def fake_getaddrinfo(host, port, type=0):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("93.184.216.34", "10.0.0.7")]

    monkeypatch.setattr(media_mod.socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(MediaRefused):
        resolver(None, tmp_path, allow_remote=True).resolve("http://mixed.example/v.mp4", "video")


def test_port_out_of_range_and_one_overall_deadline(monkeypatch, http_server, tmp_path):
    r = resolver(None, tmp_path, allow_remote=True, fetch_timeout=1.0)
    with pytest.raises(InputError, match="port") as e:
        r.resolve("http://127.0.0.1:99999/x.mp4", "video")
    assert not isinstance(e.value, MediaRefused)

    def hanging_dns(*args, **kwargs):  # a resolver that never answers must not outlive the deadline
        time.sleep(5)
        return []

    monkeypatch.setattr(media_mod.socket, "getaddrinfo", hanging_dns)
    started = time.monotonic()
    with pytest.raises(MediaTimeout):
        r.resolve("http://slow-dns.example/v.mp4", "video")
    took = time.monotonic() - started
    assert 0.9 < took < 1.5, took


def test_slow_drip_ends_at_the_deadline_not_twice_it(http_server, tmp_path):
    r = resolver(None, tmp_path, allow_remote=True, fetch_timeout=1.0, address_allowed=loopback_only)
    started = time.monotonic()
    with pytest.raises(MediaTimeout):
        r.resolve(f"{http_server}/drip", "video")
    took = time.monotonic() - started
    assert 0.9 < took < 1.5, took


# ------------------------------------------------------------------------------------------ admission


def test_admission_bounds_work_and_queue():
    async def scenario():
        admission = Admission(max_concurrency=1, max_queue=1)
        first = await admission.acquire()
        waiting = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        assert (admission.active, admission.waiting) == (1, 1)
        with pytest.raises(QueueFull):
            await admission.acquire()
        first.release()
        first.release()  # idempotent
        second = await asyncio.wait_for(waiting, 1)
        assert (admission.active, admission.waiting, admission.rejected) == (1, 0, 1)
        cancelled = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()  # a client that leaves while queued frees its place
        await asyncio.gather(cancelled, return_exceptions=True)
        assert admission.waiting == 0
        second.release()
        assert admission.active == 0

    asyncio.run(scenario())


def test_text_tokens_are_capped_over_all_requests_in_progress():
    async def scenario():
        admission = Admission(max_concurrency=4, max_queue=0, max_text_tokens=100)
        a, b = await admission.acquire(), await admission.acquire()
        a.reserve_text(60)
        with pytest.raises(QueueFull, match="text tokens"):
            b.reserve_text(50)  # 110 > 100: refused (429), and b's tokens are not counted
        b.reserve_text(40)
        assert admission.text_tokens == 100
        a.release()
        assert admission.text_tokens == 40 and admission.active == 1
        b.release()
        assert admission.text_tokens == 0 and admission.active == 0

    asyncio.run(scenario())


def test_per_request_text_limit_counts_tokens():
    from longvid.limits import count_text_tokens

    class CharTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text)}

    assert count_text_tokens(CharTokenizer(), ["abc", None, "de"], limit=5) == 5
    with pytest.raises(InputError, match="6 tokens; at most 5"):
        count_text_tokens(CharTokenizer(), ["abc", "def"], limit=5)
    with pytest.raises(InputError, match="characters"):  # refused before tokenizing
        count_text_tokens(None, ["x" * 41], limit=5)


def test_a_cancelled_job_stops_inside_the_forward(tiny_model, short_video):
    """The worker's layer hooks stop encode / prefill at the next layer, not only between tokens."""
    from longvid.serve.worker import Cancelled, JobControl, ModelWorker, _layers

    layers = _layers(tiny_model.model)
    assert any(layer in layers for layer in tiny_model.model.llm.model.layers)
    ran = []
    probe = layers[len(layers) // 2].register_forward_hook(lambda *a: ran.append(1))
    worker = ModelWorker(tiny_model.model)
    worker.start()
    try:
        control = JobControl(60)

        def job():
            control.cancel()  # the client leaves while the job runs
            return tiny_model.ask(str(short_video), "q", max_new_tokens=2)

        with pytest.raises(Cancelled):
            worker.submit(job, control).result(60)
        assert ran == []  # stopped before reaching the middle layer
        assert tiny_model.ask(str(short_video), "q", max_new_tokens=1).text is not None  # hooks idle off-thread
    finally:
        worker.stop()
        probe.remove()
    assert all(not layer._forward_pre_hooks for layer in layers)


# ------------------------------------------------------------------------------------------ engine


def test_engine_on_the_tiny_model(tiny_model, short_video, tmp_path):
    from longvid.serve.engine import ChatTask, run_chat
    from longvid.serve.media import Media
    from longvid.serve.worker import Cancelled, JobControl
    from longvid.session import FeatureCache

    cache = FeatureCache()

    def chat(media, frame_limit=64, control=None, emit=None, **sampling):
        task = ChatTask(media, "What moves?", [], None, sampling, 3, {}, [])
        return run_chat(tiny_model, cache, task, control or JobControl(60), frame_limit, emit)

    deltas: list[str] = []
    out = chat(Media(short_video), emit=deltas.append, fps=1e9, end=1.0)  # capped at the video's 10 fps
    assert len(out.plan) <= 12 and max(out.plan.indices) < 10  # about one per frame of the first second
    assert "".join(deltas) == out.text and not out.cache_hit
    assert out.completion_tokens <= 3 and out.prompt_tokens > out.visual_tokens > 0
    assert chat(Media(short_video), fps=1e9, end=1.0).cache_hit
    with pytest.raises(InputError, match="at most 4"):
        chat(Media(short_video), frame_limit=4, num_frames=8)
    junk = tmp_path / "tmpupload.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(InputError) as e:
        chat(Media(junk, junk, "the data: URL's video"))
    assert str(junk) not in str(e.value) and "the data: URL's video" in str(e.value)
    control = JobControl(60)
    control.cancel()
    with pytest.raises(Cancelled):
        chat(Media(short_video), control=control, num_frames=4)


def test_serve_engine_flags_are_checked(tiny_checkpoint, capfd):
    """--engine vllm's flags: refused in one line before anything loads (vLLM is not in this environment)."""
    from longvid.cli import main

    cases = [
        (["--engine", "nope"], "--engine must be one of longvid, vllm"),
        (["--tensor-parallel-size", "2"], "need --engine vllm"),
        (["--engine", "vllm", "--tensor-parallel-size", "0"], "--tensor-parallel-size at least 1"),
    ]
    if importlib.util.find_spec("vllm") is None:
        cases.append((["--engine", "vllm"], "--engine vllm needs vLLM: pip install 'longvid[vllm]'"))
    for args, needle in cases:
        code = main(["serve", "--model", str(tiny_checkpoint), *args])
        err = capfd.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
