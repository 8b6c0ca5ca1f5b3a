"""The direct write path of SSE responses (router/sse.py), over real HTTP on a local aiohttp server.

The test plays the batcher: it feeds a RequestStream with `send_token`, either while the handler is awake
(events go through its queue and aiohttp's own writer) or while it idles (the batcher writes them itself),
and reads the raw bytes a client receives.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from router.responses import sse_event, stream_event
from router.sse import DIRECT_WRITE_MAX_BUFFERED, SseResponse, pump_events
from router.stream import ErrorEvent, Finished, RequestStream, Token, TokenEvent
from router.types import SamplingParameters, StoppingParameters, ValidRequest

VALID = ValidRequest(inputs="x", input_ids=(1, 2), sampling=SamplingParameters(),
                     stopping=StoppingParameters(max_new_tokens=100))


def token_events(count: int, text: str = "t") -> list[TokenEvent]:
    """`count` events, the last one finished; texts are unique so order and duplicates show."""
    events = [TokenEvent(index=i, token=Token(i, f"{text}{i} ", -0.5, False)) for i in range(1, count)]
    generated = "".join(e.token.text for e in events) + f"{text}{count} "
    events.append(TokenEvent(index=count, token=Token(count, f"{text}{count} ", -0.5, False),
                             finished=Finished(generated, "length", count, None)))
    return events


def render(event: TokenEvent) -> bytes:
    return sse_event(stream_event(VALID, event))


@dataclass
class Opened:
    """One request the server is streaming: what the test feeds and what the handler wrote with."""

    stream: RequestStream
    sse: SseResponse
    request: web.Request
    ended: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SseServer:
    """A local aiohttp server whose one route streams a RequestStream the test feeds, like the router's."""

    def __init__(self, ping_interval: float = 30.0, send_buffer: int | None = None) -> None:
        self.ping_interval = ping_interval
        self.send_buffer = send_buffer
        self.opened: asyncio.Queue[Opened] = asyncio.Queue()
        self.port = 0

    async def handler(self, request: web.Request) -> web.StreamResponse:
        if self.send_buffer is not None:  # a small kernel buffer: a client that stops reading is felt soon
            request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                                  self.send_buffer)
        opened = Opened(RequestStream(), SseResponse(request), request)
        self.opened.put_nowait(opened)
        try:
            last = await pump_events(opened.sse, opened.stream, render, lambda e: b"", self.ping_interval)
            opened.ended.set_result(last)
        except asyncio.CancelledError:  # the client went away
            opened.ended.cancel()
            raise
        except Exception as exc:
            opened.ended.set_exception(exc)
            raise
        return await opened.sse.end()


@pytest.fixture
async def make_server() -> AsyncIterator:
    runners: list[web.AppRunner] = []

    async def start(**kw) -> SseServer:
        server = SseServer(**kw)
        app = web.Application()
        app.router.add_post("/sse", server.handler)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server.port = runner.addresses[0][1]
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


async def connect(server: SseServer, version: str = "1.1", receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    await loop.sock_sendall(sock, f"POST /sse HTTP/{version}\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    return sock


async def read_until(sock: socket.socket, end: bytes | None) -> bytes:
    """Bytes up to and with `end`, or up to the connection's close when `end` is None."""
    loop = asyncio.get_running_loop()
    received = b""
    while end is None or not received.endswith(end):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        if not chunk:
            assert end is None, f"closed before {end!r}: {received[-200:]!r}"
            return received
        received += chunk
    return received


async def until_idle(opened: Opened) -> None:
    """Let the handler run until it waits for its next event with its response started."""
    for _ in range(1000):
        if opened.stream.write_directly is not None and opened.sse.can_write_now():
            return
        await asyncio.sleep(0)
    raise AssertionError("the handler never went idle")


async def started_stream(make_server, count: int) -> tuple[socket.socket, Opened, list[TokenEvent]]:
    """A client whose stream has sent its first event (the headers went with it) and idles: the next token
    can be written directly."""
    server = await make_server()
    sock = await connect(server)
    opened = await server.opened.get()
    events = token_events(count)
    opened.stream.send_token(events[0])
    await until_idle(opened)
    return sock, opened, events


def split_response(raw: bytes) -> tuple[list[bytes], bytes]:
    """The header lines (without Date, which differs from run to run) and the body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")], body


def dechunk(body: bytes) -> list[bytes]:
    """The chunks of a chunked body, strictly: every length, CRLF and the terminator must be exact."""
    chunks = []
    while True:
        size_line, crlf, body = body.partition(b"\r\n")
        assert crlf and size_line == f"{int(size_line, 16):x}".encode(), size_line
        size = int(size_line, 16)
        data, body = body[:size], body[size:]
        assert body[:2] == b"\r\n", body[:20]
        body = body[2:]
        if size == 0:
            assert body == b"", body[:50]
            return chunks
        chunks.append(data)


async def stream_through(server: SseServer, events: list[TokenEvent], directly: bool, version: str = "1.1"
                         ) -> tuple[bytes, list[bool]]:
    """Stream `events` to one client: all queued up front, or each while the handler idles.

    Returns the client's raw bytes and, per event, whether send_token wrote it directly.
    """
    sock = await connect(server, version)
    opened = await server.opened.get()
    written = []
    for i, event in enumerate(events):
        if directly and i > 0:
            await until_idle(opened)
        written.append(opened.stream.send_token(event))
    raw = await read_until(sock, b"0\r\n\r\n" if version == "1.1" else None)
    assert (await opened.ended).finished is not None
    sock.close()
    return raw, written


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_direct_writes_put_the_same_bytes_on_the_wire_as_aiohttp(make_server, version: str) -> None:
    server = await make_server()
    events = token_events(12)
    through_handler, written = await stream_through(server, events, directly=False, version=version)
    assert not any(written)
    direct, written = await stream_through(server, events, directly=True, version=version)
    # The first event carries the headers: the handler writes it. The batcher writes the rest, the last
    # one too (its handler then only ends the response).
    assert written == [False] + [True] * 11
    assert split_response(direct) == split_response(through_handler)
    headers, body = split_response(direct)
    if version == "1.1":
        assert b"Transfer-Encoding: chunked" in headers
        chunks = dechunk(body)
    else:
        assert not any(line.lower().startswith(b"transfer-encoding") for line in headers)
        chunks = [event + b"\n\n" for event in body.split(b"\n\n")[:-1]]
    assert chunks == [render(e) for e in events]  # one event a chunk, each once, in order


async def test_a_connection_reused_after_a_directly_written_stream_gets_a_clean_response(make_server) -> None:
    """The response ended by aiohttp after direct writes leaves the keep-alive connection in a sound state."""
    server = await make_server()
    sock = await connect(server)
    for round_ in range(2):
        opened = await server.opened.get()
        events = token_events(5, text=f"r{round_}-")
        for i, event in enumerate(events):
            if i > 0:
                await until_idle(opened)
            opened.stream.send_token(event)
        headers, body = split_response(await read_until(sock, b"0\r\n\r\n"))
        assert headers[0] == b"HTTP/1.1 200 OK"
        assert dechunk(body) == [render(e) for e in events]
        if round_ == 0:
            await asyncio.get_running_loop().sock_sendall(sock, b"POST /sse HTTP/1.1\r\nHost: x\r\n"
                                                                b"Content-Length: 0\r\n\r\n")
    sock.close()


async def test_a_reader_that_stops_reading_gets_every_event_in_order_through_the_handler(make_server) -> None:
    """Backpressure: once the connection's buffer fills, events queue for the handler, which waits for
    the buffer to drain; nothing is lost or reordered, and the write buffer stays bounded."""
    server = await make_server(send_buffer=4096)
    sock = await connect(server, receive_buffer=4096)
    opened = await server.opened.get()
    events = token_events(600, text="x" * 1000)  # ~1 KiB an event: far more than the kernel buffers hold
    transport = opened.request.transport
    assert transport is not None
    written, most_buffered = [], 0
    for event in events:  # the batcher's pace, while the client reads nothing
        written.append(opened.stream.send_token(event))
        most_buffered = max(most_buffered, transport.get_write_buffer_size())
        await asyncio.sleep(0)
    assert any(written[1:-1]), "the direct path was never taken"
    assert not all(written[1:-1]), "the client never fell behind: nothing tested"
    # Direct writes stop at DIRECT_WRITE_MAX_BUFFERED; the handler's at asyncio's high-water mark (64 KiB).
    high_water = transport.get_write_buffer_limits()[1]
    assert DIRECT_WRITE_MAX_BUFFERED < high_water
    assert most_buffered <= high_water + 2 * len(render(events[0]))
    _, body = split_response(await read_until(sock, b"0\r\n\r\n"))
    assert dechunk(body) == [render(e) for e in events]
    sock.close()


async def test_direct_writes_count_as_activity_for_the_ping_timer(make_server) -> None:
    """A stream that gets tokens directly is not idle: no `: ping` between them; one once they stop."""
    server = await make_server(ping_interval=1.0)
    sock = await connect(server)
    opened = await server.opened.get()
    events = token_events(40)
    for i, event in enumerate(events[:-1]):  # two seconds of tokens, written directly after the first
        if i > 0:
            await until_idle(opened)
        opened.stream.send_token(event)
        await asyncio.sleep(0.05)
    received = await read_until(sock, b": ping\n\n\r\n")  # quiet now: the handler pings
    opened.stream.send_token(events[-1])
    received += await read_until(sock, b"0\r\n\r\n")
    _, body = split_response(received)
    chunks = dechunk(body)
    assert chunks[:len(events) - 1] == [render(e) for e in events[:-1]]  # no ping while tokens came
    assert set(chunks[len(events) - 1:-1]) == {b": ping\n\n"}
    assert chunks[-1] == render(events[-1])
    sock.close()


async def test_a_token_that_fails_to_render_fails_the_handler_not_the_batcher(make_server) -> None:
    sock, opened, events = await started_stream(make_server, 4)
    bad = TokenEvent(index=2, token=Token(2, "t", float("nan"), False))  # JSON has no NaN: render raises
    assert opened.stream.send_token(bad) is False  # no exception here, in the batcher's loop
    with pytest.raises(ValueError):
        await opened.ended
    sock.close()


async def test_a_client_gone_mid_stream_stops_direct_writes_and_leaves_other_streams_whole(make_server) -> None:
    server = await make_server()
    gone_sock, kept_sock = await connect(server), await connect(server)
    gone, kept = await server.opened.get(), await server.opened.get()
    if gone.request.transport.get_extra_info("peername") != gone_sock.getsockname():
        gone, kept = kept, gone
    events = token_events(20)
    for i, event in enumerate(events):
        if i == 5:  # one client resets its connection (no graceful close)
            gone_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone_sock.close()
            await asyncio.wait([gone.ended], timeout=10)
            assert gone.ended.cancelled()  # aiohttp cancelled the handler
            assert gone.stream.write_directly is None  # and its writer went with it
        for opened in (kept, gone) if i < 5 else (kept,):
            if i > 0:
                await until_idle(opened)
            assert opened.stream.send_token(event) is (i > 0)
        if i >= 5:
            assert gone.stream.send_token(event) is False  # queued for nobody: no write to a dead socket
    _, body = split_response(await read_until(kept_sock, b"0\r\n\r\n"))
    assert dechunk(body) == [render(e) for e in events]
    kept_sock.close()


async def test_an_event_never_overtakes_one_still_queued_for_the_handler(make_server, monkeypatch) -> None:
    """An event the direct path refused waits in the queue; the next one must queue behind it even when
    the connection could take it at once, before the handler has run."""
    sock, opened, events = await started_stream(make_server, 6)
    assert opened.stream.send_token(events[1]) is True
    with monkeypatch.context() as patch:  # the client lags for one event
        patch.setattr(opened.sse, "can_write_now", lambda: False)
        assert opened.stream.send_token(events[2]) is False
    assert opened.stream.send_token(events[3]) is False  # no yield in between: the handler still sleeps
    for event in events[4:]:
        await until_idle(opened)
        opened.stream.send_token(event)
    _, body = split_response(await read_until(sock, b"0\r\n\r\n"))
    assert dechunk(body) == [render(e) for e in events]
    sock.close()


async def test_a_closing_connection_is_never_written_to_directly(make_server) -> None:
    """Between a connection closing and its handler's cancellation, tokens go to the queue, not the socket."""
    sock, opened, events = await started_stream(make_server, 4)
    opened.request.transport.close()
    assert opened.stream.write_directly is not None  # the handler has not run since
    assert opened.stream.send_token(events[1]) is False
    await asyncio.wait([opened.ended], timeout=10)
    assert opened.ended.done()
    sock.close()


async def test_a_scheduled_request_gets_its_headers_before_any_token_and_every_token_written_directly(
        make_server) -> None:
    server = await make_server()
    sock = await connect(server)
    opened = await server.opened.get()
    opened.stream.scheduled()  # the batcher sent the prefill
    head = await read_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/event-stream" in head
    await until_idle(opened)
    events = token_events(4)
    written = []
    for event in events:
        written.append(opened.stream.send_token(event))
        if event.finished is None:
            await until_idle(opened)
    assert written == [True] * 4
    body = await read_until(sock, b"0\r\n\r\n")
    assert dechunk(body) == [render(e) for e in events]
    assert (await opened.ended).finished is not None
    sock.close()


async def test_an_error_after_the_request_was_scheduled_is_an_event_of_an_open_stream(make_server) -> None:
    server = await make_server()
    sock = await connect(server)
    opened = await server.opened.get()
    opened.stream.scheduled()
    await until_idle(opened)
    opened.stream.send_error("Request failed during generation: boom", "generation")
    raw = await read_until(sock, b"0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await opened.ended is None  # pump_events wrote the error as an event and returned
    sock.close()


async def test_scheduled_is_not_queued_for_a_non_streaming_consumer_or_a_finished_request() -> None:
    stream = RequestStream()
    stream.scheduled()  # nobody asked for it: a non-streaming handler only reads token events
    assert stream.next_event_nowait() is None
    stream.wants_scheduled = True
    stream.send_error("gone", "generation")
    stream.scheduled()
    assert isinstance(stream.next_event_nowait(), ErrorEvent)
    assert stream.next_event_nowait() is None
