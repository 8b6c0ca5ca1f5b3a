"""Bounded admission and cancellation on a real server with --max-concurrent-requests 2."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.e2e.server import LaunchedServer, launch, raw_post, read_until

# Long enough never to finish during a test (each test ends it), short of --max-total-tokens.
LONG = {"inputs": "Hello world", "parameters": {"max_new_tokens": 7900}}
SHORT = {"inputs": "Hello world", "parameters": {"max_new_tokens": 3}}


@pytest.fixture(scope="module")
def small_server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    s = launch(tiny_llama, "--max-concurrent-requests", "2", "--max-input-tokens", "64",
               "--max-total-tokens", "8192")
    yield s
    assert s.stop() == 0, s.log()


def open_stream(server: LaunchedServer, route: str = "/generate_stream") -> socket.socket:
    """A raw HTTP client that sends a long request and reads until the first SSE event arrives."""
    sock = raw_post(server, route, LONG)
    received = read_until(sock, b"data:")
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return sock


def open_blocking(server: LaunchedServer) -> socket.socket:
    """A non-streaming /generate that is in flight (its request fully sent)."""
    return raw_post(server, "/generate", LONG)


def wait_admits(server: LaunchedServer, count: int, within: float = 5.0) -> list[int]:
    """Send `count` short requests at once, retrying only while the server is still noticing the close."""
    deadline = time.monotonic() + within
    while True:
        with ThreadPoolExecutor(count) as pool:
            codes = list(pool.map(lambda _: server.post("/generate", SHORT).status_code, range(count)))
        if all(c == 200 for c in codes) or time.monotonic() > deadline:
            return codes
        time.sleep(0.05)


def test_third_request_is_refused_with_429_on_every_route(small_server: LaunchedServer) -> None:
    streams = [open_stream(small_server), open_stream(small_server)]
    try:
        for route in ("/generate", "/generate_stream", "/"):
            response = small_server.post(route, SHORT)
            assert response.status_code == 429, response.text
            assert response.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            assert response.headers["Content-Length"] == str(len(response.content))
            assert "Retry-After" in response.headers
            assert not response.headers["Content-Type"].startswith("text/event-stream")
    finally:
        for s in streams:
            s.close()


def test_disconnected_streams_free_their_slots_at_once(small_server: LaunchedServer) -> None:
    for _ in range(3):
        streams = [open_stream(small_server), open_stream(small_server)]
        assert small_server.post("/generate", SHORT).status_code == 429
        for s in streams:
            s.close()
        assert wait_admits(small_server, 2, within=2.0) == [200, 200]


def test_disconnected_blocking_requests_leave_the_batch(small_server: LaunchedServer) -> None:
    clients = [open_blocking(small_server), open_blocking(small_server)]
    time.sleep(0.5)  # both are generating now
    assert small_server.post("/generate", SHORT).status_code == 429
    for c in clients:
        c.close()
    assert wait_admits(small_server, 2, within=2.0) == [200, 200]
    # The abandoned long requests were dropped from the batch, not left running to the end.
    metrics = requests.get(small_server.url + "/metrics", timeout=10).text
    assert "tgi_batch_current_size 0.0" in metrics or "tgi_batch_current_size 0\n" in metrics
    assert 'tgi_request_failure{err="dropped"}' in metrics
