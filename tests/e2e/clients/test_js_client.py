"""@huggingface/inference (JavaScript, pinned in tests/e2e/js/package.json) under node, against a real server.

With an endpoint URL the v4 client sends chatCompletion(Stream) to {url}/v1/chat/completions and
textGeneration(Stream) to {url}/v1/completions (body: model, prompt, max_tokens + the other parameters,
stream); its SSE reader yields each `data:` JSON as is and stops at `data: [DONE]`.
`make install` runs `npm ci` in tests/e2e/js.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.clients.helpers import (
    HOLD_TOKENS,
    MESSAGES,
    PROMPT,
    assert_stream_integrity,
    both_slots_held,
    native_generate,
    render_chat,
    token_count,
    wait_admits,
)
from tests.e2e.server import LaunchedServer

JS = Path(__file__).resolve().parent.parent / "js"
MAX_TOKENS = 24


@pytest.fixture(scope="module", autouse=True)
def node_project() -> None:
    assert shutil.which("node"), "node is not installed"
    assert (JS / "node_modules" / "@huggingface" / "inference").is_dir(), \
        "tests/e2e/js is not installed: run `make install` (npm ci --prefix tests/e2e/js)"


def node(script: str, spec: dict) -> dict:
    done = subprocess.run(["node", str(JS / script), json.dumps(spec)], capture_output=True, text=True,
                          timeout=120, cwd=JS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return json.loads(lines[-1])


def chat(server: LaunchedServer, stream: bool, **args) -> dict:
    return node("chat.mjs", {"url": server.url, "stream": stream,
                             "args": {"messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, **args}})


def text_generation(server: LaunchedServer, stream: bool, **parameters) -> dict:
    return node("text_generation.mjs", {"url": server.url, "stream": stream, "args": {
        "inputs": PROMPT, "parameters": {"max_new_tokens": MAX_TOKENS, "temperature": 0, **parameters}}})


def test_chat_completion_stream_equals_non_stream(server: LaunchedServer) -> None:
    full = chat(server, stream=False)
    assert full["ok"], full
    assert [r["url"] for r in full["requests"]] == [server.url + "/v1/chat/completions"]
    result = full["result"]
    content = result["choices"][0]["message"]["content"]
    assert content == native_generate(server, render_chat(MESSAGES), MAX_TOKENS)["generated_text"]
    prompt_tokens = token_count(server, render_chat(MESSAGES))
    usage = result["usage"]
    assert 0 <= usage.pop("prompt_tokens_details")["cached_tokens"] < prompt_tokens
    assert usage == {"prompt_tokens": prompt_tokens, "completion_tokens": MAX_TOKENS,
                     "total_tokens": prompt_tokens + MAX_TOKENS}

    streamed = chat(server, stream=True)
    assert streamed["ok"], streamed
    chunks = streamed["chunks"]
    assert streamed["requests"][0]["body"]["stream"] is True
    assert len(chunks) == MAX_TOKENS
    assert_stream_integrity([c["choices"][0]["delta"]["content"] for c in chunks], content)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_completion_stream_include_usage(server: LaunchedServer) -> None:
    streamed = chat(server, stream=True, stream_options={"include_usage": True})
    assert streamed["ok"], streamed
    chunks = streamed["chunks"]
    assert [c for c in chunks if c.get("usage")] == [chunks[-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS == len(chunks) - 1


def test_text_generation_stream_equals_non_stream(server: LaunchedServer) -> None:
    reference = native_generate(server, PROMPT, MAX_TOKENS)["generated_text"]
    full = text_generation(server, stream=False)
    assert full["ok"], full
    request = full["requests"][0]
    assert request["url"] == server.url + "/v1/completions"
    assert request["body"]["prompt"] == PROMPT and request["body"]["max_tokens"] == MAX_TOKENS
    assert full["result"] == {"generated_text": reference}

    streamed = text_generation(server, stream=True)
    assert streamed["ok"], streamed
    chunks = streamed["chunks"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len(chunks) == MAX_TOKENS
    assert_stream_integrity([c["choices"][0]["text"] for c in chunks], reference)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_errors(server: LaunchedServer) -> None:
    with both_slots_held(server):
        for outcome in (chat(server, stream=False), chat(server, stream=True), text_generation(server, stream=True)):
            assert not outcome["ok"], outcome
            error = outcome["error"]
            assert error["name"] == "ProviderApiError" and error["status"] == 429, error
            assert error["message"] == "Failed to perform inference: Model is overloaded", error
    for outcome in (chat(server, stream=False, max_tokens=0), chat(server, stream=True, max_tokens=0),
                    text_generation(server, stream=True, max_new_tokens=0)):
        assert not outcome["ok"], outcome
        error = outcome["error"]
        assert error["status"] == 422, error
        assert error["body"] == {"error": "`max_new_tokens` must be strictly positive", "error_type": "validation"}


def test_abort_controller_frees_the_slots(server: LaunchedServer) -> None:
    outcome = node("abort.mjs", {"url": server.url, "maxTokens": HOLD_TOKENS, "messages": MESSAGES,
                                 "prompt": PROMPT})
    assert outcome["ok"], outcome
    assert outcome["thirdStatus"] == 429, outcome  # both streams held a slot
    assert outcome["afterAbort"] == ["AbortError", "AbortError"], outcome
    assert outcome["codes"] == [200, 200], outcome
    assert wait_admits(server) == [200, 200]
