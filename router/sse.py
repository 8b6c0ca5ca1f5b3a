"""Writing one Server-Sent Events response: headers on the first byte, comment pings while idle."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from router.stream import ErrorEvent, RequestStream, TokenEvent

PING = b": ping\n\n"


class StreamFailedBeforeFirstByte(Exception):
    """Nothing was sent yet, so the failure can still be a real HTTP status."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(event.message)
        self.event = event


class SseResponse:
    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    async def write(self, payload: bytes) -> None:
        if self.response is None:
            self.response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
            })
            await self.response.prepare(self.request)
        await self.response.write(payload)

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

    Headers wait for the first event or the first ping, whichever comes first: a failure before that
    raises StreamFailedBeforeFirstByte (a real HTTP status); after it, it becomes one error event.
    """
    while True:
        # A token already queued is taken at once: no timer, no extra trip through the event loop.
        event = stream.next_event_nowait()
        if event is None:
            try:
                async with asyncio.timeout(ping_interval):
                    event = await stream.next_event()
            except TimeoutError:
                await sse.write(PING)
                continue
        if isinstance(event, ErrorEvent):
            if not sse.started:
                raise StreamFailedBeforeFirstByte(event)
            await sse.write(render_error(event))
            return None
        await sse.write(render(event))
        if on_written is not None:
            on_written(event)
        if event.finished is not None:
            return event
