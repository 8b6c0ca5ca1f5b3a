"""Streaming details on every SSE route: pings while queued, stop strings never leak, [DONE] framing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.server import LaunchedServer, launch, raw_post, read_until


@pytest.fixture(scope="module")
def one_at_a_time(tiny_llama: Path) -> Iterator[LaunchedServer]:
    """A batch of one: a second request waits in the queue for as long as the first runs."""
    s = launch(tiny_llama, "--max-batch-size", "1", "--sse-ping-interval", "0.2", "--max-input-tokens", "64",
               "--max-total-tokens", "8192")
    yield s
    assert s.stop() == 0, s.log()


@pytest.mark.parametrize("route,body", [
    ("/generate_stream", {"inputs": "Hello", "parameters": {"max_new_tokens": 5}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5,
                              "stream": True, "temperature": 0}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 5, "stream": True, "temperature": 0}),
])
def test_a_queued_stream_gets_comment_pings_then_its_tokens(one_at_a_time: LaunchedServer, route: str,
                                                            body: dict) -> None:
    blocker = raw_post(one_at_a_time, "/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 7900}})
    try:
        read_until(blocker, b"data:")
        waiting = raw_post(one_at_a_time, route, body)
        head = read_until(waiting, b": ping\n\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        assert b"data:" not in head  # pinged while it had no token yet
        blocker.close()  # frees the batch: the waiting request now runs to the end
        rest = read_until(waiting, b"[DONE]" if route.startswith("/v1") else b'"details"')
        assert b"data:" in rest
        waiting.close()
    finally:
        blocker.close()


def test_chat_stream_never_shows_a_stop_sequence(one_at_a_time: LaunchedServer) -> None:
    messages = [{"role": "user", "content": "Tell me something"}]
    url = one_at_a_time.url + "/v1/chat/completions"
    free = requests.post(url, json={"messages": messages, "max_tokens": 30, "temperature": 0}, timeout=60).json()
    text = free["choices"][0]["message"]["content"]
    stop = text[6:10]
    body = {"messages": messages, "max_tokens": 30, "temperature": 0, "stop": stop, "stream": True}
    with requests.post(url, json=body, stream=True, timeout=60) as response:
        # `: ping` comments may come between events whenever a step is slower than the ping interval.
        lines = [raw.decode() for raw in response.iter_lines() if raw.startswith(b"data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    streamed = ""
    for chunk in chunks:
        streamed += chunk["choices"][0]["delta"].get("content") or ""
        assert stop not in streamed
    assert streamed == text[: text.index(stop)]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])


def test_errors_before_the_first_byte_are_real_statuses(one_at_a_time: LaunchedServer) -> None:
    url = one_at_a_time.url + "/v1/chat/completions"
    cases = [
        ({"messages": [], "stream": True}, 422, "validation"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0, "stream": True}, 422, "validation"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
          "stream": True}, 422, None),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 422, "validation"),
    ]
    for body, status, error_type in cases:
        response = requests.post(url, json=body, timeout=30)
        assert response.status_code == status, (body, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert "error" in response.json()
        if error_type:
            assert response.json()["error_type"] == error_type
