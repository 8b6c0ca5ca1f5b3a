"""What the batcher tells a waiting HTTP handler: tokens as they come, then an end or an error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from router.types import Finished, Token


# TokenEvent is a NamedTuple: one is built per streamed token on the batcher's hot path (see router.types).
class TokenEvent(NamedTuple):
    index: int  # counts from 1
    token: Token
    top_tokens: Sequence[Token] = ()
    prefill: Sequence[Token] = ()
    finished: Finished | None = None
    # monotonic time the router received this token from the shard (router overhead metric)
    received_at: float = 0.0


@dataclass(frozen=True)
class ErrorEvent:
    message: str
    error_type: str  # generation | incomplete_generation | ...


@dataclass(frozen=True)
class Scheduled:
    """The request's prefill was sent to the shards: a streaming handler opens its response now."""


SCHEDULED = Scheduled()

Event = TokenEvent | ErrorEvent | Scheduled


class RequestStream:
    """A one-way channel from the batcher to one request's handler."""

    def __init__(self) -> None:
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.done = False
        self.tokens_sent = 0
        self.error: ErrorEvent | None = None  # what it failed with, for traces
        # Set by the handler while it idles (router/sse.py pump_events): writes a token event to the client
        # at once, or returns False to leave it to the queue (response not started, client lagging).
        self.write_directly: Callable[[TokenEvent], bool] | None = None
        # The last token event is on the wire already: its handler only ends the response.
        self.last_written_directly = False
        # Set by a streaming handler: it wants a SCHEDULED event when the request's prefill is sent.
        self.wants_scheduled = False

    def send_token(self, event: TokenEvent) -> bool:
        """Hand `event` to the handler; True when it was written to the client directly (then the handler
        is not woken for it, unless it is the last).

        The last event always wakes the handler too (it ends the response), and nothing skips the queue
        while it holds events, so the client sees every event in order.
        """
        self.tokens_sent += 1
        written = self.write_directly is not None and self._events.empty() and self.write_directly(event)
        if event.finished is None:
            if written:
                return True
        else:
            self.done = True
            self.last_written_directly = written
        self._events.put_nowait(event)
        return written

    def scheduled(self) -> None:
        """The batcher sent the request's prefill. A streaming handler opens its response (the headers go
        out) while the shard computes, so that the first token, like every other, finds it open and can
        be written directly."""
        if self.wants_scheduled and not self.done and not self.cancelled:
            self._events.put_nowait(SCHEDULED)

    def send_error(self, message: str, error_type: str = "generation") -> None:
        self.done = True
        self.error = ErrorEvent(message, error_type)
        self._events.put_nowait(self.error)

    def cancel(self) -> None:
        """The client went away: the batcher drops the request at its next step."""
        if not self.done:
            self.cancelled = True

    async def next_event(self) -> Event:
        return await self._events.get()

    def next_event_nowait(self) -> Event | None:
        return None if self._events.empty() else self._events.get_nowait()
