"""`longvid serve --engine vllm`: the same OpenAI API, answered by vLLM's async engine (a real server process)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ENGINE_ARGS, MAX_TOKENS, QUESTIONS, longvid_ids
from longvid.serve.process import ServerProcess
from longvid.streaming import TextStream


# first, while no server runs: these need no engine
def test_bad_configs_and_engine_arguments_are_refused_before_vllm_starts(checkpoint, tmp_path, capfd):
    from conftest import tiny_config
    from longvid.cli import main
    from longvid.tiny import make_checkpoint

    folder = make_checkpoint(tmp_path / "drop", tiny_config(mm_llm_compress=True))
    code = main(["serve", "--model", str(folder), "--engine", "vllm"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--set mm_llm_compress=false" in err[0]
    code = main(["serve", "--model", str(checkpoint), "--engine", "vllm", "--vllm-arg", "no_such_argument=1"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and "vLLM refused the engine arguments" in err[-1] and "no_such_argument" in err[-1]


@pytest.fixture(scope="module")
def server(checkpoint, media):
    args = ["--engine", "vllm", "--media-root", media, "--frame-limit", "64", "--max-concurrency", "8"]
    for key in ("gpu_memory_utilization", "max_model_len", "enforce_eager"):
        args += ["--vllm-arg", f"{key}={json.dumps(ENGINE_ARGS[key])}"]
    # the engine core runs in a process of its own (vLLM's AsyncLLM); its model runs there too ("uni")
    args += ["--vllm-arg", "distributed_executor_backend=uni"]
    proc = ServerProcess(checkpoint, *args).start(timeout=900)  # vLLM's start is slow on a busy 2-core box
    try:
        yield proc
    finally:
        proc.stop()


def expected_text(model, video, question, **sampling) -> str:
    """longvid's own engine's answer, as its server turns ids into text."""
    stream = TextStream(model.tokenizer)
    for token in longvid_ids(model, video, question, **sampling):
        stream.push(token)
    stream.flush()
    return stream.text


def chat(server, media, question, nframes=8, **extra) -> httpx.Response:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": f"file://{media}/clip.mp4"}, "nframes": nframes},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "repetition_penalty": 1.0,
        **extra,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=300)


def test_video_url_answer_equals_longvid_engine(server, model, media):
    r = chat(server, media, QUESTIONS[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == expected_text(
        model, media / "clip.mp4", QUESTIONS[0], num_frames=8
    )
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == MAX_TOKENS
    assert body["usage"]["prompt_tokens_details"]["visual_tokens"] == 128
    assert body["longvid"]["plan"]["indices"] == [2, 7, 12, 17, 22, 27, 32, 37]


def test_checkpoint_generation_defaults_as_longvid_engine(server, model, media):
    """No sampling keys: the checkpoint's generation config (repetition_penalty 1.05, counted over the
    generated tokens as the official code does) and the family's greedy default, on both engines."""
    r = chat(server, media, QUESTIONS[1], max_tokens=24, temperature=None, repetition_penalty=None)
    assert r.status_code == 200, r.text
    answer = model.ask(media / "clip.mp4", QUESTIONS[1], max_new_tokens=24, num_frames=8)
    stream = TextStream(model.tokenizer)
    for token in answer.token_ids:
        stream.push(token)
    stream.flush()
    assert model.generation.repetition_penalty == 1.05
    assert r.json()["choices"][0]["message"]["content"] == stream.text


def test_openai_client_streaming_and_concurrent_requests(server, model, media):
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="none")
    video = {"type": "video_url", "video_url": {"url": f"file://{media}/clip.mp4"}, "nframes": 8}

    def ask(question: str, stream: bool) -> str:
        messages = [{"role": "user", "content": [video, {"type": "text", "text": question}]}]
        kwargs = dict(
            model=str(server.model),
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0,
            extra_body={"repetition_penalty": 1.0},
        )
        if not stream:
            return client.chat.completions.create(**kwargs).choices[0].message.content
        chunks = client.chat.completions.create(stream=True, **kwargs)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    expected = [expected_text(model, media / "clip.mp4", q, num_frames=8) for q in QUESTIONS]
    with ThreadPoolExecutor(len(QUESTIONS) * 2) as pool:  # all in flight at once: vLLM batches them
        answers = list(pool.map(lambda i: ask(QUESTIONS[i % 4], stream=i >= 4), range(2 * len(QUESTIONS))))
    assert answers == expected + expected


def test_limits_and_errors_are_the_servers(server, media):
    r = chat(server, media, QUESTIONS[0], nframes=128)  # over --frame-limit 64
    assert r.status_code == 400
    assert "at most 64" in r.json()["error"]["message"]
    r = chat(server, media, QUESTIONS[0], model="another-model")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    missing = {"type": "video_url", "video_url": {"url": f"file://{media}/nope.mp4"}}
    body = {"messages": [{"role": "user", "content": [missing, {"type": "text", "text": "hi"}]}]}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert r.status_code in (400, 404) and "error" in r.json()
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
