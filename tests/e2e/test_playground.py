"""The browser playground (router/playground.py) in headless Chromium, against a real tgi-launch.

Debian's `chromium` package, driven by Playwright for Python through `executable_path` (no browser is
downloaded; `make install` installs both). One server for the module, with `--api-key` (so every test also
shows that the page works with it) and `--max-concurrent-requests 2` (side by side takes both slots: a 429
is one occupied slot pair away). The tiny random model never emits EOS, so a request runs to max_new_tokens.

Screenshots of the states checked here go to a temporary directory; those in docs/img/ come from
tests/e2e/test_playground_embedded.py, on the embedded model (see docs/playground.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright import sync_api

from tests.e2e.server import LaunchedServer, launch, read_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No skip: without the browser these tests fail and say what to install.
assert os.access(CHROMIUM, os.X_OK), "Debian's chromium is not installed: `apt-get install chromium` (as root, " \
    "`make install` does it)"

KEY = "playground-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = 7000  # never finishes within a test (each test stops it), short of --max-total-tokens
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def pg_server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    s = launch(tiny_llama, "--api-key", KEY, "--max-concurrent-requests", "2", "--max-input-tokens", "256",
               "--max-total-tokens", "8192")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Mid-stream states of the tiny model, for looking at when a test fails; docs/img/ comes from
    # tests/e2e/test_playground_embedded.py (real text).
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser: Any, pg_server: LaunchedServer) -> Iterator[Any]:
    """The playground with the API key typed in; afterwards: no request left the server's origin, no script
    error, and the server is idle again."""
    context = browser.new_context(viewport={"width": 1280, "height": 760}, base_url=pg_server.url,
                                  color_scheme="light")
    urls: list[str] = []
    context.on("request", lambda r: urls.append(r.url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 4" not in m.text
            else None)
    page.goto("/playground")
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_test_id("api-key").fill(KEY)
    yield page
    context.close()
    assert errors == []
    assert urls and all(u.startswith(pg_server.url + "/") for u in urls), urls
    wait_batch_size(pg_server, 0)


def metric(server: LaunchedServer, pattern: str) -> float:
    text = requests.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    found = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_batch_size(server: LaunchedServer, size: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (current := metric(server, "tgi_batch_current_size")) != size:
        assert time.monotonic() < deadline, f"tgi_batch_current_size is {current}, not {size}"
        time.sleep(0.05)


def set_max_tokens(page: Any, count: int) -> None:
    page.get_by_test_id("param-max-tokens").fill(str(count))


def pane(page: Any, name: str) -> dict[str, Any]:
    return page.get_by_test_id(f"{name}-pane").evaluate(
        "el => ({...el.dataset, output: el.querySelector('.output').textContent,"
        " error: el.querySelector('.error').hidden ? null : el.querySelector('.error').textContent})")


def generate(page: Any) -> None:
    page.get_by_test_id("generate").click()
    page.wait_for_selector("body[data-compare=done]", timeout=WAIT_MS)


def occupy_slot(server: LaunchedServer) -> socket.socket:
    """A long stream holding one admission slot, open until its socket is closed."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps({"inputs": "Hello world", "parameters": {"max_new_tokens": LONG}}).encode()
    sock.sendall(f"POST /generate_stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert read_until(sock, b"data:").startswith(b"HTTP/1.1 200")
    return sock


def test_get_root_serves_the_page_to_browsers_only(pg_server: LaunchedServer) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    for path in ("/", "/playground"):
        page = requests.get(pg_server.url + path, headers=html, timeout=10)  # no key: the page is public
        assert page.status_code == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert 'data-api-key="required"' in page.text
        for testid in ("prompt", "generate", "stop", "stream-output", "full-output", "stream-ttft", "full-ttft",
                       "chat-input", "chat-send", "chat-log"):
            assert f'data-testid="{testid}"' in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    for name, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = requests.get(f"{pg_server.url}/playground/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(kind)
        assert "http://" not in asset.text and "https://" not in asset.text
    # Not a browser: GET / is what it was before the page (405, POST only), and needs the key like the API.
    assert requests.get(pg_server.url + "/", timeout=10).status_code == 401
    other = requests.get(pg_server.url + "/", headers={"Accept": "*/*", **AUTH}, timeout=10)
    assert other.status_code == 405 and other.headers["Allow"] == "POST"
    assert requests.get(pg_server.url + "/playground/other.js", timeout=10).status_code == 401
    assert requests.get(pg_server.url + "/playground/other.js", headers=AUTH, timeout=10).status_code == 404
    assert requests.post(pg_server.url + "/", json={"inputs": "Hi"}, headers=html, timeout=10).status_code == 401
    compat = requests.post(pg_server.url + "/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
                           headers=AUTH, timeout=30)
    assert compat.status_code == 200 and len(compat.json()) == 1


def test_streamed_pane_shows_text_first_and_both_end_with_the_same_text(page: Any) -> None:
    set_max_tokens(page, 200)  # greedy: temperature 0 is the page's default
    generate(page)
    streamed, full = pane(page, "stream"), pane(page, "full")
    assert streamed["state"] == full["state"] == "done", (streamed, full)
    # Both clocks start at the same moment: the first streamed text came before the whole answer, and
    # the streamed pane was updated token by token before it.
    assert float(streamed["firstTextMs"]) < float(full["firstTextMs"])
    assert int(streamed["renders"]) > 50 and full["renders"] == "1"
    assert streamed["output"] == full["output"] != ""
    for name in ("stream", "full"):
        assert page.get_by_test_id(f"{name}-tokens").text_content() == "200"
        assert re.fullmatch(r"\d+ ms", page.get_by_test_id(f"{name}-ttft").text_content())
        assert re.fullmatch(r"\d+(\.\d)?", page.get_by_test_id(f"{name}-tps").text_content())


def test_stop_ends_both_requests_on_the_server(page: Any, pg_server: LaunchedServer, shots: Path) -> None:
    dropped = metric(pg_server, 'tgi_request_failure{err="dropped"}')
    set_max_tokens(page, LONG)
    page.get_by_test_id("generate").click()
    page.wait_for_selector("[data-testid=stream-pane][data-state=streaming]", timeout=WAIT_MS)
    page.wait_for_function("() => document.querySelector('[data-testid=stream-output]').textContent.length > 400")
    wait_batch_size(pg_server, 2)  # the streamed and the non-streamed request are both generating
    assert pane(page, "full")["output"] == ""  # still waiting for the whole answer
    page.screenshot(path=shots / "playground-compare.png", full_page=True)
    page.get_by_test_id("stop").click()
    wait_batch_size(pg_server, 0, within=10.0)  # both left the batch: their slots and KV blocks are free
    assert metric(pg_server, 'tgi_request_failure{err="dropped"}') == dropped + 2
    page.wait_for_selector("body[data-compare=done]")
    assert pane(page, "stream")["state"] == pane(page, "full")["state"] == "stopped"
    assert page.get_by_test_id("stop").is_disabled()


def test_a_429_is_shown_with_its_retry_after(page: Any, pg_server: LaunchedServer) -> None:
    slots = [occupy_slot(pg_server), occupy_slot(pg_server)]
    try:
        set_max_tokens(page, 8)
        generate(page)
        for name in ("stream", "full"):
            shown = pane(page, name)
            assert shown["state"] == "error"
            assert "429 Too Many Requests (overloaded): Model is overloaded" in shown["error"]
            assert "Retry-After: 1 s" in shown["error"]
    finally:
        for s in slots:
            s.close()


def test_422_and_401_are_shown_plainly(page: Any) -> None:
    set_max_tokens(page, 100_000)
    generate(page)
    for name in ("stream", "full"):
        shown = pane(page, name)
        assert shown["state"] == "error"
        assert shown["error"].startswith("422 Unprocessable Entity (validation): ")
        assert "max_new_tokens" in shown["error"]
    set_max_tokens(page, 4)
    page.get_by_test_id("api-key").fill("")
    generate(page)
    shown = pane(page, "stream")
    assert shown["error"].startswith("401 Unauthorized (unauthorized)")
    assert "API key" in shown["error"]
    assert page.get_by_test_id("api-key").evaluate("el => el === document.activeElement")


def test_an_error_event_in_the_middle_of_a_stream_is_shown(page: Any) -> None:
    token = {"index": 1, "token": {"id": 5, "text": "Hello", "logprob": -1.0, "special": False},
             "generated_text": None, "details": None}
    error = {"error": "Request failed during generation: shard 0 is gone", "error_type": "generation"}
    body = f"data:{json.dumps(token)}\n\n: ping\n\ndata:{json.dumps(error)}\n\n"
    page.route("**/generate_stream", lambda route: route.fulfill(status=200, content_type="text/event-stream",
                                                                 body=body))
    set_max_tokens(page, 4)
    generate(page)
    shown = pane(page, "stream")
    assert shown["output"] == "Hello"
    assert shown["state"] == "error"
    assert shown["error"] == "Error event in the stream (generation): Request failed during generation: shard 0 is gone"
    assert pane(page, "full")["state"] == "done"  # the real server answered the other pane

    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi there"}}]}
    body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(error)}\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, content_type="text/event-stream",
                                                                     body=body))
    page.get_by_test_id("mode-chat").click()
    page.get_by_test_id("chat-input").fill("Hello")
    page.get_by_test_id("chat-send").click()
    page.wait_for_selector("[data-testid=chat-assistant][data-state=error]")
    assert page.get_by_test_id("chat-error").text_content() == (
        "Error event in the stream (generation): Request failed during generation: shard 0 is gone")
    assert page.get_by_test_id("chat-assistant").locator(".text").text_content() == "Hi there"  # what came
    assert page.get_by_test_id("chat-user").get_attribute("data-kept") == "false"  # not sent again
    assert page.get_by_test_id("chat-input").input_value() == "Hello"  # to try again


def test_chat_keeps_its_history(page: Any, shots: Path) -> None:
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.get_by_test_id("mode-chat").click()
    assert page.get_by_test_id("chat-input").evaluate("el => el === document.activeElement")
    set_max_tokens(page, 12)
    chat_input = page.get_by_test_id("chat-input")
    chat_input.type("Hello world")
    chat_input.press("Enter")  # the keyboard sends
    page.wait_for_selector("[data-testid=chat-log][data-turns='1']", timeout=WAIT_MS)
    first_stats = page.get_by_test_id("chat-stats").text_content()
    chat_input.fill("And then?")
    page.get_by_test_id("chat-send").click()
    page.wait_for_selector("[data-testid=chat-log][data-turns='2']", timeout=WAIT_MS)
    second_stats = page.get_by_test_id("chat-stats").text_content()

    log = page.get_by_test_id("chat-log").locator("li")
    roles = [log.nth(i).get_attribute("data-role") for i in range(log.count())]
    assert roles == ["user", "assistant", "user", "assistant"]
    replies = [t.text_content() for t in page.get_by_test_id("chat-assistant").locator(".text").all()]
    assert all(replies), replies
    assert [m["content"] for m in sent[1]["messages"]] == [
        "You are a helpful assistant.", "Hello world", replies[0], "And then?"]
    assert [m["role"] for m in sent[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert sent[1]["stream"] is True and sent[1]["max_tokens"] == 12 and sent[1]["temperature"] == 0
    # The server templated the whole conversation: the second prompt holds the first, its reply and more.
    prompts = [int(re.search(r"Prompt (\d+) tokens, reply 12 tokens", s).group(1)) for s in (first_stats,
                                                                                              second_stats)]
    assert prompts[1] > prompts[0] + 4
    page.screenshot(path=shots / "playground-chat.png", full_page=True)


def test_chat_stop_ends_the_request_on_the_server(page: Any, pg_server: LaunchedServer) -> None:
    page.goto("/playground#chat")
    page.reload()  # a fresh load in chat mode, with the key kept for the browser tab
    page.wait_for_selector("body[data-ready=true][data-mode=chat]")
    assert page.get_by_test_id("api-key").input_value() == KEY
    set_max_tokens(page, LONG)
    page.get_by_test_id("chat-input").fill("Tell me everything")
    page.get_by_test_id("chat-send").click()
    page.wait_for_function("() => (document.querySelector('[data-testid=chat-assistant] .text') || {})"
                           ".textContent?.length > 100", timeout=WAIT_MS)
    wait_batch_size(pg_server, 1)
    page.keyboard.press("Escape")  # Escape stops, like the Stop button
    wait_batch_size(pg_server, 0, within=10.0)
    page.wait_for_selector("[data-testid=chat-assistant][data-state=stopped]")
    assert page.get_by_test_id("chat-log").get_attribute("data-turns") == "1"  # the partial reply is kept


def test_phone_width_and_keyboard(page: Any) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
    stream_box = page.get_by_test_id("stream-pane").bounding_box()
    full_box = page.get_by_test_id("full-pane").bounding_box()
    assert full_box["y"] >= stream_box["y"] + stream_box["height"]  # the panes stack
    set_max_tokens(page, 5)
    page.get_by_test_id("prompt").focus()
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("body[data-compare=done]", timeout=WAIT_MS)
    assert pane(page, "full")["state"] == "done"
    page.get_by_test_id("prompt").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.testid") == "generate"
