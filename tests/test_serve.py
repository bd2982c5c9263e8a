"""`longvid serve` end to end: the real command in a subprocess on a loopback port with a tiny random
model, talked to with the official `openai` client and with raw HTTP (httpx).

Two servers run side by side for the whole module:
* `main`: API key, a media root, max one request in progress and two waiting, 1 MiB media cap;
* `remote`: remote media allowed (public addresses only), a 4 s request timeout, no key.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402

from longvid.serve.process import ServerProcess  # noqa: E402

KEY = "sk-test-key"
MODEL = "tiny-vcf"
LONG = 32000  # tokens (about the tiny model's whole context): tens of seconds even on an idle CPU, so a
# request asking for them is still generating when the test cancels it or its deadline passes


@pytest.fixture(scope="module")
def media_root(tmp_path_factory, short_video):
    base = tmp_path_factory.mktemp("media")
    root = base / "root"
    root.mkdir()
    shutil.copy(short_video, root / "clip.mp4")
    shutil.copy(short_video, base / "outside.mp4")
    os.symlink(base / "outside.mp4", root / "escape.mp4")
    return root


@pytest.fixture(scope="module")
def servers(tiny_checkpoint, media_root, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    main = ServerProcess(
        tiny_checkpoint,
        "--served-model-name",
        MODEL,
        "--api-key",
        KEY,
        "--media-root",
        media_root,
        "--max-concurrency",
        "1",
        "--max-queue",
        "2",
        "--max-media-mb",
        "1",
        "--log-level",
        "warning",
        log=logs / "main.log",
    ).launch()
    remote = ServerProcess(
        tiny_checkpoint,
        "--served-model-name",
        MODEL,
        "--allow-remote-media",
        "--timeout",
        "4",
        "--log-level",
        "warning",
        log=logs / "remote.log",
    ).launch()
    try:
        yield main.wait_ready(), remote.wait_ready()
    finally:
        main.stop()
        remote.stop()
    for server in (main, remote):  # no request, however bad, may have crashed a handler
        assert "Traceback" not in server.log_text(), server.log_text()[-4000:]


@pytest.fixture(scope="module")
def main(servers):
    return servers[0]


@pytest.fixture(scope="module")
def remote(servers):
    return servers[1]


@pytest.fixture(scope="module")
def client(main):
    return openai.OpenAI(base_url=main.base_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip_url(media_root):
    return f"file://{media_root}/clip.mp4"


def video(url, **knobs):
    return {"type": "video_url", "video_url": {"url": url}, **knobs}


def ask(url, question="Describe the video.", **knobs):
    return [{"role": "user", "content": [video(url, **knobs), {"type": "text", "text": question}]}]


def post(server, body, key=KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = json.dumps(body) if isinstance(body, dict) else body
    return httpx.post(
        f"{server.base_url}/chat/completions",
        content=content,
        timeout=120,
        headers={"Content-Type": "application/json", **headers},
        **kw,
    )


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def idle(server) -> bool:
    h = health(server)
    return not h["busy"] and h["requests"]["in_progress"] == 0 and h["requests"]["waiting"] == 0


def assert_error(r: httpx.Response, status: int, type_: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"] and "Traceback" not in r.text
    if type_:
        assert err["type"] == type_
    return err


# ------------------------------------------------------------------------------------------ happy paths


def test_models_and_health(main, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = httpx.get(f"{main.url}/health").json()  # no key needed
    assert h["status"] == "ok" and h["model"] == MODEL


def test_chat_about_a_video_file(client, clip_url):
    r = client.chat.completions.create(model=MODEL, messages=ask(clip_url, nframes=8), max_tokens=6)
    choice = r.choices[0]
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    info = r.model_extra["longvid"]
    plan = info["plan"]
    assert len(plan["indices"]) == 8 == info["num_frames"] and len(plan["timestamps"]) == 8
    assert plan["timestamps"] == sorted(plan["timestamps"]) and plan["timestamps"][-1] < 4.0
    visual = r.usage.prompt_tokens_details.model_extra["visual_tokens"]
    assert visual == info["visual_tokens"] > 0 and r.usage.prompt_tokens > visual
    assert 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_matches_non_streaming(client, clip_url):
    kwargs = dict(model=MODEL, messages=ask(clip_url, nframes=8), max_tokens=8, temperature=0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-2].model_extra["longvid"]["plan"] == full.model_extra["longvid"]["plan"]


def test_sampling_knobs_are_honoured_and_echoed(client, clip_url):
    r = client.chat.completions.create(
        model=MODEL, messages=ask(clip_url), max_tokens=2, extra_body={"mm_processor_kwargs": {"fps": 2}}
    )
    plan = r.model_extra["longvid"]["plan"]
    assert plan["name"] == "fps" and len(plan["indices"]) == 8  # 4 s at 2 fps
    r = client.chat.completions.create(
        model=MODEL,
        messages=ask(clip_url, nframes=4, video_start=1, video_end=3),
        max_tokens=2,
        extra_body={"mm_processor_kwargs": {"num_frames": 12}},
    )
    plan = r.model_extra["longvid"]["plan"]
    assert len(plan["indices"]) == 4 and all(1.0 <= t < 3.0 for t in plan["timestamps"])


def test_image_by_data_url(client):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is shown in this picture?"},
            ],
        }
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
    info = r.model_extra["longvid"]
    assert info["plan"]["name"] == "image" and info["num_frames"] == 1


def test_video_data_url_and_multi_turn_hit_the_feature_cache(main, client, short_video, clip_url):
    url = "data:video/mp4;base64," + base64.b64encode(short_video.read_bytes()).decode()
    first = client.chat.completions.create(model=MODEL, messages=ask(url, "What moves?", nframes=12), max_tokens=4)
    assert first.model_extra["longvid"]["feature_cache"] == "miss"
    hits = health(main)["feature_cache"]["hits"]
    messages = [
        {"role": "system", "content": "You are terse."},
        *ask(url, "What moves?", nframes=12),
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "What colour is it?"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    info = second.model_extra["longvid"]
    assert info["feature_cache"] == "hit" and info["timings"]["encode"] == 0.0
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the history is in the prompt
    # the cache is keyed by content: the same bytes by file URL are not encoded again either
    third = client.chat.completions.create(model=MODEL, messages=ask(clip_url, "What moves?", nframes=12), max_tokens=2)
    assert third.model_extra["longvid"]["feature_cache"] == "hit"
    assert health(main)["feature_cache"]["hits"] == hits + 2


def test_seed_and_stop_strings(client, clip_url):
    sampled = [
        client.chat.completions.create(
            model=MODEL, messages=ask(clip_url, nframes=8), max_tokens=8, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    greedy = (
        client.chat.completions.create(model=MODEL, messages=ask(clip_url, nframes=8), max_tokens=8, temperature=0)
        .choices[0]
        .message.content
    )
    stop = greedy[3:5]
    cut = client.chat.completions.create(
        model=MODEL, messages=ask(clip_url, nframes=8), max_tokens=8, temperature=0, stop=[stop, "never"]
    )
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=MODEL, messages=ask(clip_url, nframes=8), max_tokens=8, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == greedy[: greedy.index(stop)]


# ------------------------------------------------------------------------------------------ refusals


def test_malformed_json_and_validation_errors(main, clip_url):
    assert_error(post(main, b'{"messages": [}'), 400, "invalid_request_error")
    assert_error(post(main, b""), 400)
    for body in (
        {"messages": []},
        {"messages": [{"role": "user", "content": "no video"}]},
        {"messages": ask(clip_url) + [{"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [video(clip_url), video(clip_url)]}]},
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": ask(clip_url, nframes=-1)},
        {"messages": ask(clip_url, nframe=8)},
        {"messages": ask(clip_url), "n": 2},
        {"messages": ask(clip_url), "temperature": "hot"},
        {"messages": ask(clip_url, nframes=5000)},  # over the server's frame limit
        {"messages": ask(clip_url, video_start=10, video_end=20)},  # past the end of the clip
        {"messages": ask(clip_url, video_start=float("inf"))},  # JSON's Infinity
        {"messages": ask(clip_url, "\ud800")},
    ):  # a lone surrogate no tokenizer takes
        assert_error(post(main, body), 400, "invalid_request_error")


def test_unknown_model_route_and_method(main, client, clip_url):
    err = assert_error(post(main, {"model": "gpt-4o", "messages": ask(clip_url)}), 404, "not_found_error")
    assert err["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert_error(httpx.get(f"{main.base_url}/nothing-here", headers={"Authorization": f"Bearer {KEY}"}), 404)
    assert_error(httpx.get(f"{main.base_url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)


def test_oversize_payloads(main):
    huge = {"messages": ask("data:video/mp4;base64," + "A" * (3 << 20))}  # body over the 1 MiB media cap's limit
    assert_error(post(main, huge), 413)
    chunks = (json.dumps(huge)[i : i + 65536].encode() for i in range(0, 4 << 20, 65536))
    assert_error(post(main, chunks), 413)  # no Content-Length: counted as it streams in
    over_cap = {"messages": ask("data:video/mp4;base64," + "A" * (1500 << 10))}  # 1.1 MiB decoded, body fits
    assert_error(post(main, over_cap), 413)


@pytest.mark.parametrize(
    "url, status",
    [
        ("file:///etc/passwd", 403),
        ("file://{root}/../outside.mp4", 403),
        ("file://{root}/%2E%2E/outside.mp4", 403),
        ("file://{root}/escape.mp4", 403),  # a symlink inside the root pointing outside
        ("file://{root}/missing.mp4", 400),
        ("file://clip.mp4", 400),
        ("https://example.com/clip.mp4", 403),  # remote media is off on this server
        ("gopher://example.com/clip.mp4", 400),
    ],
)
def test_media_url_rules(main, media_root, url, status):
    r = post(main, {"messages": ask(url.format(root=media_root))})
    err = assert_error(r, status)
    assert "outside.mp4" not in err["message"] or "outside.mp4" in url  # a symlink's target is not revealed


def test_private_addresses_are_refused_when_remote_media_is_on(remote, main):
    port = main.port  # a real server on loopback: must not be reachable through the media fetcher
    for url in (
        f"http://127.0.0.1:{port}/health",
        f"http://localhost:{port}/health",
        f"http://[::1]:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/v.mp4",
        "http://0.0.0.0/v.mp4",
    ):
        err = assert_error(post(remote, {"messages": ask(url)}, key=None), 403, "permission_error")
        assert err["code"] == "media_refused"


def test_api_key(main, clip_url):
    assert_error(post(main, {"messages": ask(clip_url)}, key=None), 401, "authentication_error")
    assert_error(post(main, {"messages": ask(clip_url)}, key="wrong"), 401)
    assert_error(post(main, b"{not json", key=None), 401)  # the key is checked before the body is read
    assert_error(httpx.get(f"{main.base_url}/models"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=main.base_url, api_key="wrong", max_retries=0).models.list()


# ------------------------------------------------------------------------------------------ load, cancel, timeout


def test_queue_full_then_disconnects_free_the_worker(main, clip_url):
    """1 in progress + 2 waiting fill the server: the next request is refused at once; when the running
    client hangs up its job stops, the waiting request behind it gets its answer, and nothing is lost."""
    long_body = {"messages": ask(clip_url, nframes=8), "max_tokens": LONG}
    short_body = {"messages": ask(clip_url, nframes=8), "max_tokens": 2}
    cancelled_before = health(main)["jobs"]["cancelled"]

    async def scenario():
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=main.base_url, headers=headers, timeout=120) as c:

            async def until(predicate, timeout=30.0):
                deadline = time.monotonic() + timeout
                while not predicate(h := (await c.get(f"{main.url}/health")).json()):
                    assert time.monotonic() < deadline, h
                    await asyncio.sleep(0.05)

            running = asyncio.create_task(c.post("/chat/completions", json=long_body))
            await until(lambda h: h["busy"] and h["requests"]["in_progress"] == 1)
            waiting_short = asyncio.create_task(c.post("/chat/completions", json=short_body))
            await until(lambda h: h["requests"]["waiting"] == 1)  # queued first: served first
            waiting_long = asyncio.create_task(c.post("/chat/completions", json=long_body))
            await until(lambda h: h["requests"]["waiting"] == 2)
            t = time.monotonic()
            refused = await c.post("/chat/completions", json=short_body)
            assert time.monotonic() - t < 5
            assert_error(refused, 429, "rate_limit_error")
            assert refused.headers["Retry-After"] == "1"
            running.cancel()  # the client hangs up: its generation stops at the next token
            answered = await asyncio.wait_for(waiting_short, 60)
            assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"] is not None
            await until(lambda h: h["busy"] and h["requests"]["in_progress"] == 1)  # the long one runs now
            waiting_long.cancel()
            await asyncio.gather(running, waiting_long, return_exceptions=True)

    asyncio.run(scenario())
    wait_until(lambda: idle(main), what="the server to go idle")
    assert health(main)["jobs"]["cancelled"] == cancelled_before + 2
    assert post(main, short_body).status_code == 200


def test_streaming_disconnect_cancels_the_generation(main, clip_url):
    cancelled = health(main)["jobs"]["cancelled"]
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"messages": ask(clip_url, nframes=8), "max_tokens": LONG, "stream": True}
    with httpx.stream("POST", f"{main.base_url}/chat/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the stream is live; now hang up
    wait_until(lambda: health(main)["jobs"]["cancelled"] == cancelled + 1, what="the job to be cancelled")
    wait_until(lambda: idle(main), what="the server to go idle")


def test_timeout_answers_504(remote, clip_url):
    r = post(remote, {"messages": ask(_data_url(clip_url), nframes=8), "max_tokens": LONG})
    assert_error(r, 504, "timeout_error")
    with httpx.stream(
        "POST",
        f"{remote.base_url}/chat/completions",
        timeout=60,
        json={"messages": ask(_data_url(clip_url), nframes=8), "max_tokens": LONG, "stream": True},
    ) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["error"]["type"] == "timeout_error"
    wait_until(lambda: idle(remote), what="the server to go idle")
    assert health(remote)["jobs"]["timed_out"] >= 1


def _data_url(file_url: str) -> str:
    with open(file_url.removeprefix("file://"), "rb") as f:
        return "data:video/mp4;base64," + base64.b64encode(f.read()).decode()
