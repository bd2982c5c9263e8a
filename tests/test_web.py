"""`longvid web` at the API level (FastAPI's TestClient): the page's calls, their values and their refusals.

The browser itself is tested in test_web_browser.py; here every number is checked against the pipeline
the rest of longvid uses (`video_report`, `Pipeline.session`), and every refusal against the message the
CLI gives for the same mistake.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from longvid.assets import default_model_path  # noqa: E402
from longvid.errors import ConfigError  # noqa: E402
from longvid.options import SamplingOptions  # noqa: E402

SAMPLING = {"fps": 2}  # 4 s at 2 fps: 8 frames


@pytest.fixture(scope="module")
def media_root(tmp_path_factory, short_video):
    root = tmp_path_factory.mktemp("media")
    (root / "clips").mkdir()
    (root / "clips" / "shapes.mp4").write_bytes(short_video.read_bytes())
    return root


@pytest.fixture(scope="module")
def client(media_root):
    from longvid.serve.media import MediaPolicy
    from longvid.web.app import WebSettings, create_app

    app = create_app(
        WebSettings(
            str(default_model_path()),
            media=MediaPolicy(media_root, max_bytes=1 << 20),
            frame_limit=64,
            max_new_tokens=12,
        )
    )
    with TestClient(app) as c:
        yield c


def events(client, path: str, payload: dict) -> list[dict]:
    with client.stream("POST", path, json=payload) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def upload(client, tab: str, data: bytes, name: str = "clip.mp4"):
    return client.post(
        f"/api/upload?tab={tab}&name={name}", content=data, headers={"Content-Type": "application/octet-stream"}
    )


def test_config_offers_the_families_compression_settings(client):
    cfg = client.get("/api/config").json()
    assert cfg["family"] == "videochat_flash"
    assert cfg["compression"] == {
        "mm_llm_compress": False,
        "llm_compress_type": "attention",
        "llm_compress_layer_list": [2],
        "llm_image_token_ratio_list": [1.0, 0.5],
    }
    assert cfg["compressors"] == ["tome: 16 tokens/frame inside each clip"]
    assert cfg["files"] == ["clips/shapes.mp4"]
    assert cfg["limits"]["max_upload_bytes"] == 1 << 20 and cfg["limits"]["frame_limit"] == 64


def test_page_is_self_contained(client):
    html = client.get("/").text
    assert "<script>" in html and 'id="strip"' in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere (no CDN)


def test_upload_reports_what_longvid_info_reports(client, short_video):
    from longvid.models import load
    from longvid.report import video_report
    from longvid.video import open_video

    report = upload(client, "info", short_video.read_bytes(), "shapes.mp4").json()
    assert report["video"] | {"source": None} == {
        "source": None,
        "container": "mp4",
        "codec": "h264",
        "width": 64,
        "height": 48,
        "fps": 10.0,
        "num_frames": 40,
        "duration": 4.0,
        "warnings": [],
    }
    planned = client.post("/api/plan", json={"tab": "info", "sampling": SAMPLING}).json()
    with open_video(short_video) as video:
        expected = video_report(video, load(default_model_path(), weights=False), SamplingOptions(**SAMPLING))
    assert planned["plan"] == expected.plan and planned["budget"] == expected.budget
    assert len(planned["plan"]["indices"]) == 8 and planned["budget"]["visual_tokens"] == 8 * 16


def test_compression_settings_change_the_plan_budget(client, short_video):
    upload(client, "drop", short_video.read_bytes())
    settings = {"mm_llm_compress": True, "llm_compress_type": "uniform"}
    budget = client.post("/api/plan", json={"tab": "drop", "sampling": SAMPLING, "settings": settings}).json()["budget"]
    # the tiny model drops half of the visual tokens before layer 2 of 4
    text = budget["text_tokens"]
    assert budget["kv_tokens_per_layer"] == [128 + text, 128 + text, 64 + text, 64 + text]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"sampling": {"fps": -1}}, "fps must be a finite number > 0, got -1"),
        ({"sampling": {"start": 3, "end": 1}}, "end (1 s) must be after start (3 s)"),
        ({"sampling": {"nframes": 3}}, "unknown sampling option 'nframes'"),
        ({"settings": {"mm_llm_compress": 3}}, "--set mm_llm_compress=3: expected a true/false like False"),
        ({"settings": {"beacon_ratio": [2]}}, "beacon_ratio: not a compression setting of videochat_flash"),
        ({"sampling": {"fps": 30, "max_frames": 100}}, "the request samples 40 frames"),
    ],
)
def test_bad_values_are_refused_in_one_line(client, short_video, payload, message):
    upload(client, "bad", short_video.read_bytes())
    client.app.state.web.settings.frame_limit = 32
    try:
        response = client.post("/api/plan", json={"tab": "bad", **payload})
    finally:
        client.app.state.web.settings.frame_limit = 64
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("error: ") and message in error and "\n" not in error


def test_sampling_messages_are_the_clis(client, short_video):
    with pytest.raises(ConfigError) as cli:
        SamplingOptions(fps=-1)
    upload(client, "same", short_video.read_bytes())
    response = client.post("/api/plan", json={"tab": "same", "sampling": {"fps": -1}})
    assert response.json()["error"] == f"error: {cli.value}"


def test_encode_once_then_chat_as_the_pipeline_does(client, short_video):
    from longvid.models import load
    from longvid.pipeline import Pipeline

    upload(client, "chat", short_video.read_bytes())
    encoded = events(client, "/api/encode", {"tab": "chat", "sampling": SAMPLING})
    progress = [e for e in encoded if e["type"] == "progress"]
    frames = [e for e in encoded if e["type"] == "frame"]
    assert [(p["done"], p["total"]) for p in progress] == [(i, 8) for i in range(9)]
    assert [f["t"] for f in frames] == [0.2, 0.7, 1.2, 1.7, 2.2, 2.7, 3.2, 3.7]
    assert all(f["src"].startswith("data:image/jpeg;base64,/9j/") for f in frames)  # JPEG magic
    ready = encoded[-1]
    assert ready["type"] == "ready" and ready["info"]["frames"] == 8 and ready["info"]["visual_tokens"] == 128

    session = Pipeline(load(default_model_path())).session(str(short_video), SAMPLING)
    for turn, question in enumerate(["What shape is shown?", "What colour is it?"], 1):
        streamed = events(client, "/api/ask", {"tab": "chat", "question": question})
        done = streamed[-1]
        expected = session.ask(question, max_new_tokens=12)
        assert "".join(e["text"] for e in streamed if e["type"] == "token") == done["text"] == expected.text
        assert done["turn"] == turn and done["completion_tokens"] == len(expected.token_ids)
        assert done["budget"]["visual_tokens"] == 128 and done["prompt_tokens"] == expected.prompt_tokens
        assert done["budget"]["context_tokens"] == expected.prompt_tokens
        assert set(done["timings"]) >= {"decode", "encode", "prefill", "generate", "tokens_per_s"}
    assert done["timings"]["decode"] == done["timings"]["encode"] == 0.0  # encoded once, for the first answer
    web_session = client.app.state.web.tabs["chat"].session
    assert web_session.stats.encodes == 1 and web_session.stats.video_prefills == 1

    first = events(client, "/api/ask", {"tab": "chat", "question": "What shape is shown?"})[-1]
    assert client.post("/api/reset", json={"tab": "chat"}).json() == {"ok": True, "history": 0}
    after = events(client, "/api/ask", {"tab": "chat", "question": "What shape is shown?"})[-1]
    assert after["budget"]["text_tokens"] < first["budget"]["text_tokens"]  # the history went with the reset
    assert after["text"] == session.pipeline.session(session.visual).ask("What shape is shown?", max_new_tokens=12).text


def test_two_tabs_never_mix_and_share_the_feature_cache(client, short_video, media_root):
    upload(client, "tab1", short_video.read_bytes())
    assert client.post("/api/pick", json={"tab": "tab2", "path": "clips/shapes.mp4"}).status_code == 200
    assert events(client, "/api/encode", {"tab": "tab1", "sampling": SAMPLING})[-1]["type"] == "ready"
    second = events(client, "/api/encode", {"tab": "tab2", "sampling": SAMPLING})
    assert second[-1]["info"]["feature_cache_hit"] is True  # same bytes, same plan, same model: not re-encoded
    assert len([e for e in second if e["type"] == "frame"]) == 8  # the strip is still shown
    events(client, "/api/ask", {"tab": "tab1", "question": "What is it?"})
    events(client, "/api/ask", {"tab": "tab1", "question": "And then?"})
    only = events(client, "/api/ask", {"tab": "tab2", "question": "What is it?"})[-1]
    tabs = client.app.state.web.tabs
    assert [q for q, _ in tabs["tab1"].session.history] == ["What is it?", "And then?"]
    assert [q for q, _ in tabs["tab2"].session.history] == ["What is it?"] and only["turn"] == 1


def test_corrupt_upload_gives_the_clis_line_without_our_temp_path(client, tmp_path):
    from longvid.errors import InputError
    from longvid.video import open_video

    data = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    response = upload(client, "corrupt", data, "broken.mp4")
    assert response.status_code == 400
    error = response.json()["error"]
    (tmp_path / "broken.mp4").write_bytes(data)
    with pytest.raises(InputError) as cli:
        open_video(tmp_path / "broken.mp4")
    assert error == f"error: {' '.join(str(cli.value).replace(str(tmp_path / 'broken.mp4'), 'broken.mp4').split())}"
    assert "longvid-web-" not in error and "Traceback" not in error
    assert client.post("/api/ask", json={"tab": "corrupt", "question": "x"}).json() == {
        "error": "error: no video yet: upload or pick one"
    }


def test_uploads_and_frame_sizes_are_capped(client, short_video, monkeypatch):
    kept = set(client.app.state.web.tmp_dir.iterdir())
    too_big = upload(client, "big", b"\x00" * ((1 << 20) + 1))
    assert too_big.status_code == 413 and "larger than this server's limit of 1 MiB" in too_big.json()["error"]
    monkeypatch.setattr("longvid.serve.media.MAX_VIDEO_PIXELS", 32 * 32)
    wide = upload(client, "big", short_video.read_bytes())
    assert wide.status_code == 413
    assert wide.json()["error"] == (
        "error: the video's frames are 64x48, more than this server's limit of 1024 pixels per frame"
    )
    assert set(client.app.state.web.tmp_dir.iterdir()) == kept  # refused uploads leave nothing behind


def test_picking_outside_the_media_root_is_refused(client):
    response = client.post("/api/pick", json={"tab": "pick", "path": "../../etc/passwd"})
    assert response.status_code == 403 and "only files under the server's media root" in response.json()["error"]
    missing = client.post("/api/pick", json={"tab": "pick", "path": "clips/none.mp4"})
    assert missing.status_code == 400 and "no such file under the media root" in missing.json()["error"]


def test_example_video_is_generated_for_a_fresh_machine(client):
    report = client.post("/api/example", json={"tab": "fresh"}).json()
    assert report["video"]["duration"] == 60.0 and report["video"]["codec"] == "h264"
    assert report["budget"]["visual_tokens"] == 16 * len(report["plan"]["indices"])


def test_cli_refuses_a_bad_media_root_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "longvid", "web", "--media-root", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --media-root {tmp_path / 'none'}: not a folder"


def test_video_xl_offers_its_beacon_ratio(tmp_path, short_video):
    from longvid.tiny import make_tiny_video_xl
    from longvid.web.app import WebSettings, create_app

    app = create_app(WebSettings(str(make_tiny_video_xl(tmp_path / "vxl")), max_new_tokens=4))
    with TestClient(app) as c:
        assert c.get("/api/config").json()["compression"] == {"enable_beacon": True, "beacon_ratio": [2, 4, 8]}
        upload(c, "x", short_video.read_bytes())
        kv = {
            r: c.post("/api/plan", json={"tab": "x", "settings": {"beacon_ratio": [r]}}).json()["budget"]
            for r in (2, 8)
        }
        assert (kv[2]["kv_per_frame"], kv[8]["kv_per_frame"]) == (8.0, 2.0)  # 16 tokens per frame / ratio
        assert kv[2]["visual_tokens"] == kv[8]["visual_tokens"] == 40 * 16
        bad = c.post("/api/plan", json={"tab": "x", "settings": {"beacon_ratio": [0]}}).json()
        assert bad == {"error": "error: beacon_ratio must be a list of positive integers, got [0]"}
        ready = events(c, "/api/encode", {"tab": "x", "settings": {"beacon_ratio": [8]}})[-1]
        assert ready["info"]["visual_tokens"] == 640
        done = events(c, "/api/ask", {"tab": "x", "question": "What is it?"})[-1]
        assert done["budget"]["kv_per_frame"] == 2.0 and done["completion_tokens"] == 4
