"""The continuous-batching loop: prefill, decode, filter, and fan each token out to its stream."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

from router.metrics import Metrics
from router.queue import BatchBudget, Entry, Queue
from router.shard_client import ShardClient, ShardError
from router.stream import TokenEvent
from router.types import Batch, CachedBatch, Generation, StepResult, ValidRequest

log = logging.getLogger("router.batcher")


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_prefill_tokens: int
    max_batch_total_tokens: int
    block_size: int
    waiting_served_ratio: float = 0.3
    max_waiting_tokens: int = 20
    max_batch_size: int | None = None
    # The shard can run a prefill and the running batch's next token in one step (Info.support_chunking:
    # prompts are fed in chunks next to the decoding rows). Then admitting requests pauses nobody, so
    # they join at the next step instead of waiting for waiting_served_ratio or max_waiting_tokens.
    prefill_joins_decode: bool = False


class Batcher:
    def __init__(self, client: ShardClient, config: SchedulerConfig, metrics: Metrics | None = None) -> None:
        self.client = client
        self.config = config
        self.metrics = metrics or Metrics()
        self.queue = Queue()
        self.running: dict[int, Entry] = {}
        self.batch: CachedBatch | None = None
        self.healthy = True
        self.last_progress = time.monotonic()
        # When the shard call now in flight began; None between calls. A hung shard shows up here.
        self.call_started: float | None = None
        self._wake = asyncio.Event()
        self._next_batch_id = 1

    # ---- called by HTTP handlers --------------------------------------------------------------
    def submit(self, request: ValidRequest) -> Entry:
        entry = Entry(request)
        self.queue.append(entry)
        self.metrics.queue_size.set(len(self.queue))
        self._wake.set()
        return entry

    def cancel(self, entry: Entry) -> None:
        """The handler is gone: forget the entry now if it still waits, else at the next step."""
        entry.stream.cancel()
        if self.queue.remove(entry):
            self.metrics.queue_size.set(len(self.queue))
            return
        self._wake.set()

    # ---- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        waiting_steps = 0
        while True:
            if self.batch is None:
                self.running.clear()
                entries = self._cut(min_size=1, total_budget=self.config.max_batch_total_tokens,
                                    max_size=self.config.max_batch_size)
                if not entries:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                _, self.batch = await self._prefill(entries)
                waiting_steps = 0
                continue
            new_batch = None
            entries = self._admit(waiting_steps)
            if entries and self.config.prefill_joins_decode:
                # One step for everyone: the running requests' tokens and the newcomers' prompts.
                ok, merged = await self._prefill(entries, cached=self.batch)
                if ok:
                    self.batch = merged
                waiting_steps = 0
                await self._filter_cancelled()
                continue
            if entries:
                _, new_batch = await self._prefill(entries)
                waiting_steps = 0
                if self.batch is None:  # the running batch was lost with a failed prefill
                    self.batch = new_batch
                    continue
            batches = [b for b in (self.batch, new_batch) if b is not None]
            self.batch = await self._decode(batches)
            waiting_steps += 1
            await self._filter_cancelled()

    def _cut(self, min_size: int, total_budget: int, max_size: int | None) -> list[Entry]:
        for entry in self.queue.drop_cancelled():
            log.debug("request %d cancelled while queued", entry.id)
        entries = self.queue.next_batch(BatchBudget(
            prefill_tokens=self.config.max_batch_prefill_tokens, total_tokens=total_budget,
            block_size=self.config.block_size, max_size=max_size, min_size=min_size,
        ))
        self.metrics.queue_size.set(len(self.queue))
        if entries:
            self.metrics.batch_next_size.observe(len(entries))
        return entries

    def _admit(self, waiting_steps: int) -> list[Entry]:
        """New requests join if enough can (ratio of the batch) or the queue has waited long enough."""
        if not len(self.queue):
            return []
        size = len(self.running)
        min_size = 1 if self.config.prefill_joins_decode or waiting_steps >= self.config.max_waiting_tokens else max(
            1, math.ceil(self.config.waiting_served_ratio * size))
        used = sum(e.cache_tokens(self.config.block_size) for e in self.running.values())
        max_size = None if self.config.max_batch_size is None else self.config.max_batch_size - size
        if max_size is not None and max_size <= 0:
            return []
        return self._cut(min_size, self.config.max_batch_total_tokens - used, max_size)

    async def _prefill(self, entries: list[Entry],
                       cached: CachedBatch | None = None) -> tuple[bool, CachedBatch | None]:
        """(whether the call succeeded, the resulting batch). With `cached`, its requests step too and
        the result is the merged batch; a failure that only concerns the new requests leaves it as is."""
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        now = time.monotonic()
        for entry in entries:
            entry.batched_at = now
            self.running[entry.id] = entry
            entry.stream.scheduled()
        batch = Batch(batch_id, {e.id: e.request for e in entries}, max_tokens=sum(e.max_tokens for e in entries))
        return await self._step("prefill", self.client.prefill(batch, cached), entries)

    async def _decode(self, batches: list[CachedBatch]) -> CachedBatch | None:
        return (await self._step("decode", self.client.decode(batches), None))[1]

    async def _step(self, method: str, call: Awaitable[StepResult],
                    entries: list[Entry] | None) -> tuple[bool, CachedBatch | None]:
        m = self.metrics
        m.batch_inference_count.labels(method).inc()
        start = self.call_started = time.monotonic()
        try:
            result = await call
        except ShardError as exc:
            self._fail(exc, entries if entries is not None else list(self.running.values()))
            self._observe_batch()
            return False, None
        finally:
            self.call_started = None
        received_at = result.received_at
        # Tokens first, bookkeeping after: the metrics below are not what a client waits for.
        handlers_woken = self._dispatch(result.generations, received_at)
        m.flush_token_overheads()
        m.batch_inference_success.labels(method).inc()
        m.batch_inference_duration.labels(method).observe(received_at - start)
        m.batch_forward_duration.labels(method).observe(result.forward_ns / 1e9)
        m.batch_decode_duration.labels(method).observe(result.sample_and_postprocess_ns / 1e9)
        if result.draft_tokens:
            m.speculative_draft_tokens.inc(result.draft_tokens)
            m.speculative_accepted_tokens.inc(result.accepted_tokens)
        self._observe_batch()
        if handlers_woken:
            # Let the handlers write the tokens queued for them before the next step starts: once it runs,
            # the shard's threads hold the CPUs and the writes would wait for a time slice (on 2 cores
            # that made the router's share of a token 2-3 ms at 32 streams). Tokens written directly
            # in _dispatch are on the wire already; only those of clients that lag, of non-streaming
            # requests, and of streams whose handler had not opened its response yet come this way (a last
            # token written directly wakes its handler only to end the response, which may wait for the
            # next shard call's await).
            await asyncio.sleep(0)
        return True, result.batch

    def _observe_batch(self) -> None:
        self.metrics.batch_current_size.set(len(self.running))
        self.metrics.batch_current_max_tokens.set(
            sum(e.cache_tokens(self.config.block_size) for e in self.running.values()))

    def _dispatch(self, generations: Iterable[Generation], received_at: float) -> int:
        """Send each generation's token to its stream; returns how many went to a handler's queue. A request
        that got several tokens in the step (speculation) has several generations, in order: each is its
        own event with the next index."""
        now = self.last_progress = received_at
        queued = written_directly = 0
        prompt_tokens = cached_tokens = 0  # of the requests whose first token this is
        running = self.running
        for generation in generations:
            entry = running.get(generation.request_id)
            if entry is None:
                continue
            if entry.first_token_at is None:
                entry.first_token_at = now
                entry.cached_prompt_tokens = generation.cached_prompt_tokens
                prompt_tokens += entry.request.input_length
                cached_tokens += generation.cached_prompt_tokens
            finished = generation.finished
            if finished is not None:
                entry.finished = finished
                del running[entry.id]
            stream = entry.stream
            if stream.cancelled:
                continue
            event = TokenEvent(stream.tokens_sent + 1, generation.token, generation.top_tokens, generation.prefill,
                               finished, received_at)
            if stream.send_token(event):
                written_directly += 1
            else:
                queued += 1
        if written_directly:
            self.metrics.tokens_written_directly.inc(written_directly)
        if prompt_tokens:
            self.metrics.prefix_cache_prompt_tokens.inc(prompt_tokens)
            if cached_tokens:
                self.metrics.prefix_cache_hit_tokens.inc(cached_tokens)
        return queued

    async def _filter_cancelled(self) -> None:
        if self.batch is None:
            return
        gone = [e for e in self.running.values() if e.stream.cancelled]
        if not gone:
            return
        for entry in gone:
            del self.running[entry.id]
        keep = [i for i in self.batch.request_ids if i in self.running]
        start = time.monotonic()
        try:
            self.batch = await self.client.filter_batch(self.batch.id, keep)
        except ShardError as exc:
            self._fail(exc, list(self.running.values()))
            self.batch = None
        self.metrics.batch_filter_duration.labels("filter").observe(time.monotonic() - start)
        self._observe_batch()

    def _fail(self, exc: ShardError, entries: list[Entry]) -> None:
        log.error("shard call failed: %s", exc)
        if exc.unavailable:
            self.healthy = False
        victims = entries if exc.request_level else list(self.running.values()) + [
            e for e in entries if e.id not in self.running]
        for entry in victims:
            self.running.pop(entry.id, None)
            entry.stream.send_error(f"Request failed during generation: {exc}", "generation")
        if not exc.request_level:
            self.batch = None
            asyncio.get_running_loop().create_task(self._clear_quietly())

    async def _clear_quietly(self) -> None:
        try:
            await self.client.clear_cache()
        except ShardError:
            pass

    @property
    def batch_size(self) -> int:
        return len(self.running)

    def stalled_for(self) -> float:
        """Seconds the current shard call has been running (0 when none is)."""
        return 0.0 if self.call_started is None else time.monotonic() - self.call_started

    def abort_all(self, message: str, error_type: str) -> int:
        """End every queued and running request with an error (shutdown past the drain timeout)."""
        victims = list(self.running.values()) + self.queue.take_all()
        for entry in victims:
            if not entry.stream.done:
                entry.stream.send_error(message, error_type)
        self.metrics.queue_size.set(len(self.queue))
        return len(victims)
