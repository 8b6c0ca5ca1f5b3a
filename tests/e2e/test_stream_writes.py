"""Streamed tokens as a raw HTTP client gets them, now that the batcher writes most of them itself.

Byte-level framing, HTTP/1.0, a client that stops reading, and one that hangs up mid-stream: every token
arrives once, in order, and the response ends cleanly (router/sse.py explains the direct write path).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time

import requests

from tests.e2e.server import LaunchedServer, raw_post, read_until


def metric(server: LaunchedServer, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def written_directly(server: LaunchedServer) -> float:
    return metric(server, "tgi_py_router_tokens_written_directly_total")


def dechunk(body: bytes) -> tuple[list[bytes], bytes]:
    """Strictly parse a chunked body: (chunks, bytes after the terminating 0-chunk)."""
    chunks = []
    while True:
        size_line, crlf, body = body.partition(b"\r\n")
        assert crlf and re.fullmatch(rb"[0-9a-f]+", size_line), size_line[:50]
        size = int(size_line, 16)
        data, body = body[:size], body[size:]
        assert body[:2] == b"\r\n", body[:50]
        body = body[2:]
        if size == 0:
            return chunks, body
        chunks.append(data)


def token_events(payloads: list[bytes]) -> list[dict]:
    """Each payload must be exactly one `data:` event (pings are left out); returns their JSON."""
    events = []
    for payload in payloads:
        if payload == b": ping\n\n":
            continue
        assert payload.startswith(b"data:") and payload.endswith(b"\n\n") and payload.count(b"\n\n") == 1, payload
        events.append(json.loads(payload[len(b"data:"):]))
    return events


def read_response(sock: socket.socket, received: bytes = b"") -> tuple[bytes, bytes]:
    """One chunked response off a keep-alive connection: (head, body up to and with the terminator).

    `received`: what was already read of it.
    """
    if b"\r\n\r\n" not in received:
        received += read_until(sock, b"\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    while not body.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {body[-200:]!r}"
        body += chunk
    return head, body


def assert_whole_stream(events: list[dict], max_new_tokens: int) -> None:
    assert [e["index"] for e in events] == list(range(1, max_new_tokens + 1))  # each token once, in order
    assert all(e["generated_text"] is None for e in events[:-1])
    assert events[-1]["details"]["generated_tokens"] == max_new_tokens
    streamed = "".join(e["token"]["text"] for e in events if not e["token"]["special"])
    assert streamed == events[-1]["generated_text"]


def test_a_stream_is_exact_http11_chunks_one_event_each_and_the_connection_stays_usable(
        server: LaunchedServer) -> None:
    before = written_directly(server)
    sock = raw_post(server, "/generate_stream", {"inputs": "Hello", "parameters": {"max_new_tokens": 40,
                                                                                    "details": True}})
    try:
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nTransfer-Encoding: chunked" in head and b"Content-Length" not in head
        chunks, rest = dechunk(body)
        assert rest == b""  # nothing after the terminator
        events = token_events(chunks)  # aiohttp writes one event a chunk: so do direct writes
        assert_whole_stream(events, 40)
        # Every token was written by the batcher itself: the handler sent the headers while the prefill
        # ran, and the last token's handler only ends the response.
        assert written_directly(server) - before == 40
        # The response was ended correctly: the same connection serves the next request.
        data = json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}).encode()
        sock.sendall(b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert [e["index"] for e in token_events(dechunk(body)[0])] == [1, 2, 3]
    finally:
        sock.close()


def test_a_chat_stream_is_exact_chunks_ending_with_done_and_its_tokens_are_written_directly(
        server: LaunchedServer) -> None:
    before = written_directly(server)
    sock = raw_post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}],
                                                     "max_tokens": 20, "stream": True, "temperature": 0,
                                                     "stream_options": {"include_usage": True}})
    try:
        head, body = read_response(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nTransfer-Encoding: chunked" in head
    chunks, rest = dechunk(body)
    assert rest == b""
    assert chunks[-1] == b"data: [DONE]\n\n"
    events = [json.loads(c[len(b"data: "):]) for c in chunks[:-1] if c != b": ping\n\n"]
    assert all(c.startswith(b"data: ") and c.count(b"\n\n") == 1 for c in chunks[:-1] if c != b": ping\n\n")
    usage = events.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 20
    assert len(events) == 20
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 19 + ["length"]
    assert written_directly(server) - before == 20


def test_an_http10_client_gets_the_stream_unchunked_until_the_connection_closes(server: LaunchedServer) -> None:
    before = written_directly(server)
    data = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 30, "details": True}}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /generate_stream HTTP/1.0\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Transfer-Encoding" not in head
    assert body.endswith(b"\n\n")
    assert_whole_stream(token_events([event + b"\n\n" for event in body.split(b"\n\n")[:-1]]), 30)
    assert written_directly(server) - before == 30


def test_a_client_that_stops_reading_still_gets_every_token_in_order(server: LaunchedServer) -> None:
    """A reader that pauses for the whole generation: whatever the kernel's buffers do not hold waits in the
    router (tests/router/test_sse.py forces that fallback with small buffers), then arrives in order."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server feels it soon
    sock.settimeout(60)
    sock.connect((host, int(port)))
    tokens = 400
    data = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": tokens, "details": True,
                                                         "top_n_tokens": 5}}).encode()
    try:
        sock.sendall(b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        deadline = time.monotonic() + 120
        time.sleep(0.5)
        while metric(server, "tgi_batch_current_size") and time.monotonic() < deadline:  # reading nothing
            time.sleep(0.2)
        head, body = read_response(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    chunks, rest = dechunk(body)
    assert rest == b""
    events = token_events(chunks)
    assert_whole_stream(events, tokens)
    assert all(len(e["top_tokens"]) == 5 for e in events)


def test_a_client_hanging_up_mid_stream_leaves_the_other_streams_whole(server: LaunchedServer) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 200, "details": True}}
    socks = [raw_post(server, "/generate_stream", body) for _ in range(4)]
    try:
        starts = [read_until(sock, b"data:") for sock in socks]
        reset, closed, *kept = socks
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no FIN
        reset.close()
        closed.close()
        for sock, start in zip(kept, starts[2:], strict=True):
            head, body = read_response(sock, start)
            chunks, rest = dechunk(body)
            assert rest == b""
            assert_whole_stream(token_events(chunks), 200)
    finally:
        for sock in socks:
            sock.close()
    # The dropped requests left the batch and the server serves on.
    deadline = time.monotonic() + 10
    while metric(server, "tgi_batch_current_size") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "tgi_batch_current_size") == 0
    assert metric(server, 'tgi_request_failure{err="dropped"}') >= 2
    response = server.post("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 5}})
    assert response.status_code == 200, response.text
    assert "Traceback" not in server.log()
