"""Clients that stall mid-request: half-sent bodies hold no slot, get 408 at the deadline, leak nothing.

The server admits 4 requests at a time; 220 connections each send a request's headers and five bytes of
its body, then nothing. While they are held every route answers normal requests, and once the body
deadline passes each held connection has its 408 (or is closed) and the router's file descriptors are
back to their count before the attack.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.e2e.procs import children_of, cmdline
from tests.e2e.server import LaunchedServer, launch

BODY_TIMEOUT_S = 6.0
KEEP_ALIVE_S = 3.0
HELD = 220
MAX_CONCURRENT = 4


@pytest.fixture(scope="module")
def guarded_server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    s = launch(tiny_llama, "--max-concurrent-requests", str(MAX_CONCURRENT), "--max-input-tokens", "64",
               "--max-total-tokens", "512", "--request-body-timeout", str(BODY_TIMEOUT_S),
               "--keep-alive-timeout", str(KEEP_ALIVE_S))
    yield s
    assert s.stop() == 0, s.log()


def router_pid(server: LaunchedServer) -> int:
    routers = [p for p in children_of(server.process.pid) if "router" in cmdline(p)]
    assert len(routers) == 1, [cmdline(p) for p in children_of(server.process.pid)]
    return routers[0]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(server: LaunchedServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def half_sent(server: LaunchedServer, route: str) -> socket.socket:
    sock = connect(server)
    sock.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 100000\r\n\r\n{\"inp".encode())
    return sock


def wait_fds(pid: int, at_most: int, within: float) -> int:
    deadline = time.monotonic() + within
    while (count := open_fds(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def normal_requests(server: LaunchedServer) -> dict[str, int]:
    generate = {"inputs": "Hello", "parameters": {"max_new_tokens": 4}}
    calls = {
        "/generate": lambda: server.post("/generate", generate),
        "/generate_stream": lambda: server.post("/generate_stream", generate),
        "/": lambda: server.post("/", generate),
        "/tokenize": lambda: server.post("/tokenize", {"inputs": "Hello"}),
        "/v1/completions": lambda: server.post("/v1/completions", {"prompt": "Hello", "max_tokens": 4}),
        "/v1/chat/completions": lambda: server.post(
            "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        "/v1/chat/completions stream": lambda: server.post(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}),
        "/info": lambda: requests.get(server.url + "/info", timeout=30),
        "/health": lambda: requests.get(server.url + "/health", timeout=30),
    }
    return {name: call().status_code for name, call in calls.items()}


def test_half_sent_bodies_hold_no_slot_and_get_408_at_the_deadline(guarded_server: LaunchedServer) -> None:
    pid = router_pid(guarded_server)
    assert normal_requests(guarded_server)  # warm every route once: lazily created state is not a leak
    before = open_fds(pid)
    routes = ["/generate", "/generate_stream", "/", "/v1/chat/completions", "/v1/completions", "/tokenize"]
    started = time.monotonic()
    held = [half_sent(guarded_server, routes[i % len(routes)]) for i in range(HELD)]
    try:
        # Every slot is free: more requests at once than --max-concurrent-requests still come through
        # in turn, and every route answers.
        assert normal_requests(guarded_server) == dict.fromkeys(normal_requests(guarded_server), 200)
        with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
            codes = list(pool.map(lambda _: guarded_server.post(
                "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}).status_code, range(8)))
        assert codes.count(200) >= MAX_CONCURRENT, codes
        assert set(codes) <= {200, 429}, codes
        assert time.monotonic() - started < BODY_TIMEOUT_S, "the normal requests took past the deadline"

        answers = []
        for sock in held:
            sock.settimeout(BODY_TIMEOUT_S + 10)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            answers.append(received)
        waited = time.monotonic() - started
        assert waited >= BODY_TIMEOUT_S - 0.5, f"answered after {waited:.1f} s, before the deadline"
        for received in answers:
            if received:  # a 408 with a JSON body, then the server closed
                head, _, body = received.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), received[:200]
                assert json.loads(body) == {
                    "error": f"the request body was not received within {BODY_TIMEOUT_S:g} s",
                    "error_type": "request_timeout"}
        assert sum(1 for r in answers if r) >= HELD // 2, "most held connections should see their 408"
    finally:
        for sock in held:
            sock.close()
    assert wait_fds(pid, before, within=10) <= before, os.listdir(f"/proc/{pid}/fd")
    metrics = requests.get(guarded_server.url + "/metrics", timeout=30).text
    timeouts = [line for line in metrics.splitlines() if "request_timeout" in line]
    assert timeouts == ['tgi_request_failure{err="request_timeout"} ' + f"{HELD}.0"], timeouts


def test_a_body_sent_slowly_within_the_deadline_is_served(guarded_server: LaunchedServer) -> None:
    body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 3}}).encode()
    sock = connect(guarded_server)
    try:
        sock.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        for start in range(0, len(body), 8):  # 8 bytes every 0.1 s
            sock.sendall(body[start:start + 8])
            time.sleep(0.1)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    assert "generated_text" in json.loads(received.partition(b"\r\n\r\n")[2])


def test_idle_and_half_headed_connections_close_after_the_keep_alive_timeout(
        guarded_server: LaunchedServer) -> None:
    pid = router_pid(guarded_server)
    before = open_fds(pid)
    idle = [connect(guarded_server) for _ in range(20)]  # never send a byte
    half_headed = [connect(guarded_server) for _ in range(20)]
    for sock in half_headed:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Le")
    reused = connect(guarded_server)  # one full request on a keep-alive connection, then silence
    body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 2}}).encode()
    reused.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    started = time.monotonic()
    try:
        first = reused.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        for sock in [*idle, *half_headed, reused]:
            sock.settimeout(KEEP_ALIVE_S + 10)
            while sock.recv(65536):
                pass  # the server closes it: recv returns b""
        assert time.monotonic() - started >= KEEP_ALIVE_S - 1.0
    finally:
        for sock in [*idle, *half_headed, reused]:
            sock.close()
    assert wait_fds(pid, before, within=10) <= before, os.listdir(f"/proc/{pid}/fd")


def test_an_oversized_content_length_gets_413_before_any_body_is_sent(guarded_server: LaunchedServer) -> None:
    for route in ("/generate", "/v1/chat/completions", "/tokenize"):
        sock = connect(guarded_server)
        try:
            sock.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: 1000000000\r\n\r\n".encode())
            sock.settimeout(BODY_TIMEOUT_S / 2)  # well before the body deadline
            received = sock.recv(65536)
        finally:
            sock.close()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), (route, received[:200])
        assert json.loads(body)["error_type"] == "validation"
