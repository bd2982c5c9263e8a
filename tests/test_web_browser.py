"""`longvid web` in a real browser: Debian's headless Chromium, driven by Playwright (no downloaded browser).

`make browser-setup` installs Chromium (apt) when it is missing. Without it these tests skip, saying why,
unless LONGVID_REQUIRE_BROWSER=1 (CI), where a missing browser fails them. The page is served by a real
uvicorn on a free loopback port, with the bundled model.

LONGVID_WEB_SCREENSHOT=docs/web.png also writes the first test's screenshot there (the README's picture).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _unavailable(reason: str):
    if os.environ.get("LONGVID_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (LONGVID_REQUIRE_BROWSER=1; run `make browser-setup`)")
    pytest.skip(f"{reason}: run `make browser-setup` (apt-get install chromium) and `pip install playwright`")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("LONGVID_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if path is None:
        _unavailable("no Chromium on this machine")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real uvicorn serving `longvid web` with the bundled model, on a free loopback port."""
    import uvicorn

    from longvid.assets import default_model_path
    from longvid.serve.media import MediaPolicy
    from longvid.web.app import WebSettings, create_app

    root = tmp_path_factory.mktemp("media")
    app = create_app(WebSettings(str(default_model_path()), media=MediaPolicy(root), max_new_tokens=12))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the web server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()


def open_tab(browser, url: str):
    tab = browser.new_page(viewport={"width": 1280, "height": 860})
    tab.set_default_timeout(30_000)
    tab.goto(url)
    tab.wait_for_selector("body[data-ready='1']")
    return tab


@pytest.fixture
def page(browser, server):
    return open_tab(browser, server)


def ask(tab, question: str, n: int) -> str:
    """Ask the `n`-th question in this tab; the text of its streamed answer once it is done."""
    tab.fill("#question", question)
    tab.click("#ask")
    done = f".msg.assistant:nth-of-type({2 * n})[data-done='1']"
    # done, or an error line (then fail with it); generous: the suite shares two cores with other work
    tab.wait_for_function(
        f"document.querySelector(\"{done}\") || document.querySelector('#error').innerText", timeout=90_000
    )
    assert tab.inner_text("#error") == "", tab.inner_text("#error")
    return tab.locator(done).locator(".timings").inner_text()


def test_upload_ask_twice_see_frames_and_timings(page, short_video, tmp_path):
    assert "example.mp4 (generated)" in page.inner_text("#info")  # it opens with something to ask about
    page.fill("#fps", "2")
    page.set_input_files("#file", str(short_video))
    page.wait_for_function(
        "document.querySelector('#info').innerText.includes('shapes.mp4') && "
        "document.querySelector('#info').innerText.includes('8 frames')"
    )
    info = page.inner_text("#info")
    assert "64×48" in info and "4.00 s (40 frames at 10.000 fps)" in info and "h264" in info
    assert "visual tokens\t128" in info and "8 frames" in info  # fps 2 over 4 s, before anything is decoded

    for n, question in enumerate(["What shape is shown?", "What colour is it?"], 1):
        ask(page, question, n)
    answers = page.locator(".msg.assistant").all()
    texts = [a.locator("span").inner_text() for a in answers]
    assert all(texts), texts
    timings = [a.locator(".timings").inner_text() for a in answers]
    assert all("prefill" in t and "generate" in t and "128 visual" in t for t in timings)
    assert timings[1].startswith("decode 0.00 s · encode 0.00 s")  # encoded once, for the first answer
    assert [m.inner_text() for m in page.locator(".msg.user").all()] == ["What shape is shown?", "What colour is it?"]

    strip = page.locator("#strip figure")
    assert strip.count() == 8
    assert strip.first.inner_text() == "0.2 s" and strip.last.inner_text() == "3.7 s"
    assert page.evaluate("[...document.querySelectorAll('#strip img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector("#progress", "p => p.value === p.max && p.max === 8")
    assert page.inner_text("#error") == ""

    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if target := os.environ.get("LONGVID_WEB_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

    page.click("#reset")
    page.wait_for_function("document.querySelectorAll('#chat .msg').length === 0")


def test_corrupt_file_shows_one_error_line(page, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    page.set_input_files("#file", str(broken))
    page.wait_for_function("document.querySelector('#error').innerText.length > 0")
    error = page.inner_text("#error")
    assert error.startswith("error: broken.mp4: not a readable video"), error
    assert "\n" not in error and "Traceback" not in page.content()


def test_two_tabs_keep_their_own_chats(browser, server):
    """Two tabs of one browser on the example video: each has its own history on the server."""
    first, second = open_tab(browser, server), open_tab(browser, server)
    for tab in (first, second):
        tab.fill("#max_frames", "8")
        tab.fill("#fps", "0.2")
        tab.dispatch_event("#fps", "change")
        tab.wait_for_function("document.querySelector('#info').innerText.includes('fps: 8 frames')")
    one = ask(first, "What shape is shown?", 1)
    two = ask(first, "What colour is it?", 2)
    other = ask(second, "What shape is shown?", 1)
    tokens = [int(t.split(" visual + ")[1].split(" text")[0]) for t in (one, two, other)]
    assert tokens[1] > tokens[0] == tokens[2]  # the second tab's first question carries no history
    assert second.locator(".msg.user").all_inner_texts() == ["What shape is shown?"]
    assert first.locator(".msg.user").all_inner_texts() == ["What shape is shown?", "What colour is it?"]
