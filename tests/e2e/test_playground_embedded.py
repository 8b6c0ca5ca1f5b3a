"""The playground on the embedded SmolLM2, as a first-time user sees it: real text in both modes. These runs
also take the screenshots of docs/img/ (TGI_PY_PLAYGROUND_SCREENSHOTS=docs/img writes them there)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import LaunchedServer, launch
from tests.e2e.test_playground import CHROMIUM, WAIT_MS, generate, pane, set_max_tokens, sync_api, wait_batch_size

QUESTION = "<|im_start|>user\nWhat is Deep Learning? Answer in two sentences.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LaunchedServer]:
    server = launch(None, "--max-input-tokens", "512", "--max-total-tokens", "1024")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("TGI_PY_PLAYGROUND_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(smollm2: LaunchedServer) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=smollm2.url,
                                      color_scheme="light")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto("/")  # a browser's GET / gets the page
        page.wait_for_selector("body[data-ready=true]")
        yield page
        browser.close()
        assert errors == []
        wait_batch_size(smollm2, 0)


def test_side_by_side_on_the_real_model(page: Any, shots: Path) -> None:
    page.get_by_test_id("prompt").fill(QUESTION)
    set_max_tokens(page, 60)
    generate(page)
    streamed, full = pane(page, "stream"), pane(page, "full")
    assert streamed["state"] == full["state"] == "done", (streamed, full)
    assert float(streamed["firstTextMs"]) < float(full["firstTextMs"])
    assert streamed["output"] == full["output"] and len(streamed["output"].split()) > 10
    page.screenshot(path=shots / "playground-compare.png", full_page=True)


def test_chat_on_the_real_model(page: Any, shots: Path) -> None:
    page.get_by_test_id("mode-chat").click()
    set_max_tokens(page, 40)
    chat_input = page.get_by_test_id("chat-input")
    for turn, question in enumerate(["What is the capital of France?", "And what is it famous for?"], start=1):
        chat_input.fill(question)
        chat_input.press("Enter")
        page.wait_for_selector(f"[data-testid=chat-log][data-turns='{turn}']", timeout=WAIT_MS)
    replies = [t.text_content() for t in page.get_by_test_id("chat-assistant").locator(".text").all()]
    assert len(replies) == 2 and all(len(r.split()) > 3 for r in replies), replies
    page.screenshot(path=shots / "playground-chat.png", full_page=True)
