"""SSE `: ping` comments (--sse-ping-interval) while a stream waits: every client ignores them.

The server runs one request at a time (--max-batch-size 1), so a stream started while a long one runs
waits in the queue, receiving only pings, until the long one is cancelled; then it must come out exactly
as it would have without the wait.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from huggingface_hub import InferenceClient
from text_generation import Client

from tests.e2e.clients.helpers import (
    MESSAGES,
    PROMPT,
    assert_stream_integrity,
    data_events,
    native_generate,
    open_native_stream,
    parse_sse,
    render_chat,
)
from tests.e2e.server import LaunchedServer, launch

JS = Path(__file__).resolve().parent.parent / "js"
PING_INTERVAL = 0.1
MAX_TOKENS = 12
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    s = launch(tiny_llama, "--max-concurrent-requests", "8", "--max-input-tokens", "256",
               "--max-total-tokens", "8192", "--max-batch-size", "1", "--sse-ping-interval", str(PING_INTERVAL))
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def chat_reference(server: LaunchedServer) -> str:
    return native_generate(server, render_chat(MESSAGES), MAX_TOKENS)["generated_text"]


@pytest.fixture(scope="module")
def text_reference(server: LaunchedServer) -> str:
    return native_generate(server, PROMPT, MAX_TOKENS)["generated_text"]


def queue_size(server: LaunchedServer) -> float:
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    match = re.search(r"^tgi_queue_size (\S+)$", metrics, re.MULTILINE)
    assert match, metrics
    return float(match.group(1))


def behind_a_long_stream(server: LaunchedServer, client_call: Callable[[], Any]) -> Any:
    """Run client_call while a long stream occupies the only batch slot; release it once the call has
    waited in the queue for several ping intervals."""
    blocker = open_native_stream(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(client_call)
            deadline = time.monotonic() + 30
            while queue_size(server) < 1:
                assert not future.done(), future.result()
                assert time.monotonic() < deadline, "the client's request never reached the queue"
                time.sleep(0.02)
            time.sleep(5 * PING_INTERVAL)  # the idle time in which pings are sent
            assert not future.done(), "the request did not wait"
            blocker.close()
            return future.result(timeout=60)
    finally:
        blocker.close()


def test_curl_sees_pings_then_the_stream(server: LaunchedServer, text_reference: str, chat_reference: str) -> None:
    host = server.url.removeprefix("http://")

    def curl(route: str, body: dict) -> bytes:
        done = subprocess.run(["curl", "-sN", f"{host}{route}", "-X", "POST", "-d", json.dumps(body),
                               "-H", "Content-Type: application/json"], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    raw = behind_a_long_stream(server, lambda: curl("/generate_stream", {
        "inputs": PROMPT, "parameters": {"max_new_tokens": MAX_TOKENS}}))
    assert raw.startswith(b": ping\n\n"), raw[:200]
    pings = [c for e in parse_sse(raw) for c in e.comments]
    assert len(pings) >= 2 and set(pings) == {": ping"}, pings
    events = [json.loads(p) for p in data_events(raw)]
    assert len(events) == MAX_TOKENS and events[-1]["generated_text"] == text_reference
    assert_stream_integrity([e["token"]["text"] for e in events if not e["token"]["special"]], text_reference)

    raw = behind_a_long_stream(server, lambda: curl("/v1/chat/completions", {
        "model": "tgi", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}))
    assert raw.startswith(b": ping\n\n"), raw[:200]
    payloads = data_events(raw)
    assert payloads[-1] == "[DONE]"
    assert "".join(json.loads(p)["choices"][0]["delta"]["content"] for p in payloads[:-1]) == chat_reference


def test_openai_ignores_pings(server: LaunchedServer, chat_reference: str, text_reference: str) -> None:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        chunks = behind_a_long_stream(server, lambda: list(client.chat.completions.create(
            model="tgi", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True})))
        assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == chat_reference
        assert chunks[-1].usage.completion_tokens == MAX_TOKENS
        chunks = behind_a_long_stream(server, lambda: list(client.completions.create(
            model="tgi", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True)))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == text_reference


def test_hf_hub_ignores_pings(server: LaunchedServer, chat_reference: str, text_reference: str) -> None:
    with InferenceClient(base_url=server.url) as client:
        chunks = behind_a_long_stream(server, lambda: list(client.chat_completion(
            MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True)))
        assert "".join(c.choices[0].delta.content for c in chunks) == chat_reference
        events = behind_a_long_stream(server, lambda: list(client.text_generation(
            PROMPT, max_new_tokens=MAX_TOKENS, stream=True, details=True)))
        assert events[-1].generated_text == text_reference and len(events) == MAX_TOKENS


def test_text_generation_client_ignores_pings(server: LaunchedServer, text_reference: str) -> None:
    client = Client(server.url, timeout=60)
    events = behind_a_long_stream(server, lambda: list(client.generate_stream(PROMPT, max_new_tokens=MAX_TOKENS)))
    assert events[-1].generated_text == text_reference and len(events) == MAX_TOKENS


def test_js_ignores_pings(server: LaunchedServer, chat_reference: str, text_reference: str) -> None:
    def node(script: str, args: dict) -> dict:
        spec = {"url": server.url, "stream": True, "args": args}
        done = subprocess.run(["node", str(JS / script), json.dumps(spec)], capture_output=True, text=True,
                              timeout=60, cwd=JS)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["ok"], out
        return out

    out = behind_a_long_stream(server, lambda: node("chat.mjs", {
        "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}))
    assert "".join(c["choices"][0]["delta"]["content"] for c in out["chunks"]) == chat_reference
    out = behind_a_long_stream(server, lambda: node("text_generation.mjs", {
        "inputs": PROMPT, "parameters": {"max_new_tokens": MAX_TOKENS, "temperature": 0}}))
    assert "".join(c["choices"][0]["text"] for c in out["chunks"]) == text_reference
