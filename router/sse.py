"""Writing one Server-Sent Events response: headers on the first byte, comment pings while idle.

While its handler idles, a streaming response takes tokens straight from the batcher: `pump_events` hands
the stream a writer that renders a token event and puts its bytes on the connection synchronously, so a
token costs no queue hand-off and no task wake-up. The handler itself writes the headers, the last event,
errors, pings, and any event that comes while it is awake or while the client is not keeping up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from router.stream import ErrorEvent, Event, RequestStream, Scheduled, TokenEvent

PING = b": ping\n\n"
# Tokens are written directly only while at most this much waits in the connection's write buffer
# (asyncio's default low-water mark). Past it the client is not keeping up: events go through the
# handler, which waits for the buffer to drain, so a slow reader never makes the batcher buffer.
DIRECT_WRITE_MAX_BUFFERED = 16 * 1024


class StreamFailedBeforeFirstByte(Exception):
    """Nothing was sent yet, so the failure can still be a real HTTP status."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(event.message)
        self.event = event


def direct_transport(request: web.BaseRequest, response: web.StreamResponse) -> tuple[asyncio.Transport | None, bool]:
    """The connection under a started response, to write body bytes to ourselves, and whether they go
    in HTTP/1.1 chunks; (None, False) where we cannot write them as aiohttp would.

    aiohttp's StreamResponse.write is a coroutine, so a synchronous write has to go to the transport and
    frame the body the way aiohttp's writer does. The framing is HTTP's, read from the response's own
    headers: a response without Content-Length is chunked on HTTP/1.1 ("Transfer-Encoding: chunked",
    each chunk `<hex length>\\r\\n<bytes>\\r\\n`; write_eof adds the `0\\r\\n\\r\\n` terminator) and is the raw
    bytes up to the connection's close on HTTP/1.0. Compressed bodies are never written directly.
    Checked against aiohttp's own bytes in tests/router/test_sse.py.
    """
    headers = response.headers
    if response.compression or hdrs.CONTENT_LENGTH in headers:
        return None, False
    chunked = headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
    if not chunked and request.version >= HttpVersion11:
        return None, False
    return request.transport, chunked


class SseResponse:
    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.loop = asyncio.get_running_loop()
        # The connection to write to directly, once the response is open (its headers sent).
        self._transport: asyncio.Transport | None = None
        self._chunked = False
        # loop time of the last direct write: it counts as activity for the ping timer
        self.written_directly_at = 0.0

    @property
    def started(self) -> bool:
        return self.response is not None

    async def open(self) -> None:
        """Start the response: aiohttp's StreamResponse puts the headers on the connection in prepare()
        (its _send_headers_immediately), so from then on body bytes may follow them on the transport."""
        self.response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        await self.response.prepare(self.request)
        self._transport, self._chunked = direct_transport(self.request, self.response)

    async def write(self, payload: bytes) -> None:
        if self.response is None:
            await self.open()
        assert self.response is not None
        await self.response.write(payload)
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > DIRECT_WRITE_MAX_BUFFERED:
            # aiohttp waits for a drain by the bytes it wrote itself, and direct writes are not among them.
            await self.request.writer.drain()

    def can_write_now(self) -> bool:
        """Whether write_now may be used: the response is started and its client keeps up."""
        transport = self._transport
        return (transport is not None and not transport.is_closing()
                and transport.get_write_buffer_size() <= DIRECT_WRITE_MAX_BUFFERED)

    def write_now(self, payload: bytes) -> None:
        """Put `payload` on the connection at once, as `write` would frame it. Only after can_write_now().

        aiohttp's byte counts (response.body_length) leave these bytes out; nothing here reads them.
        """
        assert self._transport is not None
        if not payload:
            return  # an empty chunk is chunked encoding's end of the body (a token may render to nothing)
        self._transport.write(b"%x\r\n%s\r\n" % (len(payload), payload) if self._chunked else payload)
        self.written_directly_at = self.loop.time()

    async def end(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write_eof()
        return self.response


async def pump_events(
    sse: SseResponse,
    stream: RequestStream,
    render: Callable[[TokenEvent], bytes],
    render_error: Callable[[ErrorEvent], bytes],
    ping_interval: float,
    on_written: Callable[[TokenEvent], None] | None = None,
) -> TokenEvent | None:
    """Write every token event until the last one; ping while nothing comes. Returns the final event.

    Headers wait for the request's prefill to be sent to the shards (SCHEDULED), the first event or the
    first ping, whichever comes first: a failure before that (validation came earlier; a shutdown or a
    failure of the queue) raises StreamFailedBeforeFirstByte, a real HTTP status; after it, it becomes one
    error event, as TGI reports every streaming error.
    `render` is called once per token event, in order, whether the handler or the batcher writes it.
    """

    def write_directly(event: TokenEvent) -> bool:
        """The batcher's write of `event` while this handler idles; False leaves it to the queue."""
        if not sse.can_write_now():
            return False
        try:
            sse.write_now(render(event))
        except Exception:
            return False  # never the batcher's failure: the handler takes the event and fails as it always did
        if on_written is not None:
            on_written(event)
        return True

    stream.wants_scheduled = True
    while True:
        # A token already queued is taken at once: no timer, no extra trip through the event loop.
        event = stream.next_event_nowait()
        if event is None:
            stream.write_directly = write_directly
            try:
                event = await _next_event(stream, sse, ping_interval)
            finally:
                stream.write_directly = None
            if event is None:
                await sse.write(PING)
                continue
        if isinstance(event, Scheduled):
            if not sse.started:
                await sse.open()
            continue
        if isinstance(event, ErrorEvent):
            if not sse.started:
                raise StreamFailedBeforeFirstByte(event)
            await sse.write(render_error(event))
            return None
        if event.finished is not None and stream.last_written_directly:
            return event
        await sse.write(render(event))
        if on_written is not None:
            on_written(event)
        if event.finished is not None:
            return event


async def _next_event(stream: RequestStream, sse: SseResponse, ping_interval: float) -> Event | None:
    """The next queued event, or None once ping_interval passed with nothing written (time to ping)."""
    quiet_since = sse.loop.time()
    while True:
        try:
            async with asyncio.timeout_at(quiet_since + ping_interval):
                return await stream.next_event()
        except TimeoutError:
            # Tokens written directly meanwhile did not wake us: the connection is only idle since the last.
            quiet_since = max(quiet_since, sse.written_directly_at)
            if quiet_since + ping_interval <= sse.loop.time():
                return None
