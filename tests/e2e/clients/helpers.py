"""Shared pieces of the real-client tests: the server, SSE parsing, slot holding, prompts."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import jinja2

from tests.e2e.server import LaunchedServer
from tests.model_factory import CHAT_TEMPLATE

# Every client module runs against a server launched with these flags (2 slots, so that two held
# streams make a third request overloaded).
SERVER_FLAGS = ("--max-concurrent-requests", "2", "--max-input-tokens", "256", "--max-total-tokens", "8192")
MAX_INPUT_TOKENS = 256
# Long enough to stay running for the whole of a test, short of --max-total-tokens. Every stream that
# holds a slot is ended by its test: 900 tokens of the tiny model (~2 s) once ran out before a CI test
# had started its second stream.
HOLD_TOKENS = 7900
SHORT = {"inputs": "Hello world", "parameters": {"max_new_tokens": 3}}
PROMPT = "What is Deep Learning?"
MESSAGES = [{"role": "user", "content": PROMPT}]


def render_chat(messages: list[dict]) -> str:
    """The prompt the server must build for /v1/chat/completions (the model's template + generation prompt)."""
    return jinja2.Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def native_generate(server: LaunchedServer, inputs: str, max_new_tokens: int, **parameters) -> dict:
    """Greedy /generate with details: the reference every client's output is compared with."""
    body = {"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens, "details": True, **parameters}}
    response = server.post("/generate", body)
    assert response.status_code == 200, response.text
    return response.json()


def token_count(server: LaunchedServer, text: str) -> int:
    response = server.post("/tokenize", {"inputs": text})
    assert response.status_code == 200, response.text
    return len(response.json())


def over_long_prompt(server: LaunchedServer) -> str:
    """A prompt with more than --max-input-tokens tokens (checked with /tokenize, not assumed)."""
    text = "Hello world! " * 60
    assert token_count(server, text) > MAX_INPUT_TOKENS
    return text


# ---- SSE as bytes on the wire -------------------------------------------------------------------
@dataclass
class SseEvent:
    data: str | None = None  # None for a comment-only block
    comments: tuple[str, ...] = ()


def parse_sse(raw: bytes) -> list[SseEvent]:
    """Split a complete SSE body into events; comment lines (`: ping`) are kept, attached to their block.

    Strict about the framing: every line is `data:...` or a comment, and the body ends with a blank line.
    """
    text = raw.decode("utf-8")
    assert text.endswith("\n\n") or text == "", f"SSE body does not end with a blank line: {text[-80:]!r}"
    found: list[SseEvent] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        data: list[str] = []
        comments: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("data:"):
                data.append(line[len("data:"):].removeprefix(" "))
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        found.append(SseEvent("\n".join(data) if data else None, tuple(comments)))
    return found


def data_events(raw: bytes) -> list[str]:
    return [e.data for e in parse_sse(raw) if e.data is not None]


# ---- holding both slots -------------------------------------------------------------------------
def open_native_stream(server: LaunchedServer, max_new_tokens: int = HOLD_TOKENS) -> socket.socket:
    """A raw HTTP client streaming a long /generate_stream; returns once its first event has arrived."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": max_new_tokens}}).encode()
    sock.sendall(f"POST /generate_stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"data:" not in received:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before the first event: {received[:300]!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return sock


def admit_codes(server: LaunchedServer, count: int) -> list[int]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: server.post("/generate", SHORT, timeout=30).status_code, range(count)))


def wait_admits(server: LaunchedServer, count: int = 2, within: float = 5.0) -> list[int]:
    """Send `count` short requests at once, retrying only while the server is still noticing a close."""
    deadline = time.monotonic() + within
    while True:
        codes = admit_codes(server, count)
        if all(c == 200 for c in codes) or time.monotonic() > deadline:
            return codes
        time.sleep(0.05)


def assert_full(server: LaunchedServer) -> None:
    response = server.post("/generate", SHORT, timeout=30)
    assert response.status_code == 429, (response.status_code, response.text)


@contextmanager
def both_slots_held(server: LaunchedServer) -> Iterator[None]:
    """Two long native streams running (first token seen); both slots are free again afterwards."""
    streams = [open_native_stream(server), open_native_stream(server)]
    try:
        assert_full(server)
        yield
    finally:
        for s in streams:
            s.close()
    assert wait_admits(server) == [200, 200]


# ---- streamed text integrity -------------------------------------------------------------------
def assert_stream_integrity(chunks: list[str], final: str) -> None:
    """Streamed pieces add up to the final text, every prefix agrees with it, and no piece carries a
    U+FFFD (an incomplete UTF-8 sequence) that the final text does not have at that position."""
    assert "".join(chunks) == final, (chunks, final)
    position = 0
    for i, piece in enumerate(chunks):
        assert final[position:position + len(piece)] == piece, (i, piece, final)
        for offset, char in enumerate(piece):
            if char == "\ufffd":
                assert final[position + offset] == "\ufffd", (i, piece, position + offset, final)
        position += len(piece)


@dataclass
class StopCase:
    stop: str  # 2-3 consecutive greedy tokens
    before: str  # the greedy text before the stop: what a stopped request must answer
    tokens: int  # generated tokens up to the one that completes the stop


def pick_stop(server: LaunchedServer, inputs: str, max_new_tokens: int = 40) -> StopCase:
    """A stop string made of 2-3 consecutive greedy (non-special) tokens of printable text, whose first
    occurrence in the output is where those tokens start, and longer than any one of them."""
    details = native_generate(server, inputs, max_new_tokens)["details"]
    tokens = details["tokens"]
    full = "".join(t["text"] for t in tokens if not t["special"])
    for start in range(2, len(tokens) - 3):
        for width in (3, 2):
            parts = tokens[start:start + width]
            stop = "".join(p["text"] for p in parts)
            offset = len("".join(t["text"] for t in tokens[:start] if not t["special"]))
            if (all(not p["special"] and p["text"].strip() and "\ufffd" not in p["text"] for p in parts)
                    and stop.isprintable() and full.find(stop) == offset
                    and all(len(p["text"]) < len(stop) for p in parts)):
                return StopCase(stop, full[:offset], start + width)
    raise AssertionError(f"no multi-token stop string in {tokens!r}")


def assert_stopped_stream(pieces: list[str], final: str, case: StopCase) -> None:
    """The stop string (which spans several tokens) never reaches the client, not even across chunks."""
    streamed = ""
    for piece in pieces:
        assert case.stop not in piece, (piece, case)
        streamed += piece
        assert case.stop not in streamed, (streamed, case)
    assert_stream_integrity(pieces, final)
    assert final == case.before


def check_chat(server: LaunchedServer, full, chunks: list, max_tokens: int, messages: list[dict] = MESSAGES) -> None:
    """A non-stream chat answer vs the streamed chunks of the same request vs the native route on the rendered
    template. `full` and `chunks` are any client's objects with OpenAI's attribute names."""
    reference = native_generate(server, render_chat(messages), max_tokens)["generated_text"]
    content = full.choices[0].message.content
    assert content == reference
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason == "length"  # EOS is suppressed: greedy runs to max_tokens
    prompt_tokens = token_count(server, render_chat(messages))
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == (
        prompt_tokens, max_tokens, prompt_tokens + max_tokens)

    with_content = [c for c in chunks if c.choices and c.choices[0].delta.content is not None]
    assert_stream_integrity([c.choices[0].delta.content for c in with_content], content)
    assert len(with_content) == full.usage.completion_tokens
    assert with_content[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in with_content[:-1])
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
