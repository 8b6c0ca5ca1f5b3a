"""The continuous-batching loop's decisions, driven against an in-process fake shard."""

from __future__ import annotations

import asyncio

import pytest

from router.batcher import Batcher, SchedulerConfig
from router.stream import ErrorEvent, TokenEvent
from router.types import SamplingParameters, StoppingParameters, ValidRequest
from tests.router.fake_shard import FakeShard


def request(max_new_tokens: int, input_length: int = 4) -> ValidRequest:
    return ValidRequest(inputs="x", input_ids=tuple(range(input_length)), sampling=SamplingParameters(),
                        stopping=StoppingParameters(max_new_tokens=max_new_tokens))


def make_batcher(shard: FakeShard, **kw) -> Batcher:
    config = SchedulerConfig(max_batch_prefill_tokens=kw.pop("prefill", 100),
                             max_batch_total_tokens=kw.pop("total", 10_000), block_size=16, **kw)
    return Batcher(shard, config)  # type: ignore[arg-type]


async def collect(entry) -> list:
    events = []
    while True:
        event = await asyncio.wait_for(entry.stream.next_event(), 5)
        events.append(event)
        if isinstance(event, ErrorEvent) or event.finished is not None:
            return events


async def run_with(batcher: Batcher, coro):
    task = asyncio.create_task(batcher.run())
    try:
        return await coro
    finally:
        task.cancel()


async def test_each_token_reaches_its_stream_and_ends_with_the_text() -> None:
    shard = FakeShard()
    batcher = make_batcher(shard)
    entry = batcher.submit(request(5))
    events = await run_with(batcher, collect(entry))
    assert [e.index for e in events] == [1, 2, 3, 4, 5]
    assert all(isinstance(e, TokenEvent) for e in events)
    assert events[-1].finished.generated_text == "t1 t2 t3 t4 t5 "
    assert [c[0] for c in shard.calls] == ["prefill", "decode", "decode", "decode", "decode"]


async def test_waiting_requests_join_the_running_batch_between_decode_steps() -> None:
    shard = FakeShard()
    batcher = make_batcher(shard, waiting_served_ratio=0.0)
    first = batcher.submit(request(30))

    async def scenario():
        while len(shard.calls) < 3:
            await asyncio.sleep(0)
        second = batcher.submit(request(3))
        await collect(second)
        await collect(first)
        return second

    second = await run_with(batcher, scenario())
    prefills = [ids for name, ids in shard.calls if name == "prefill"]
    assert prefills == [[first.id], [second.id]]
    # After the second prefill, decode steps carry both requests until the short one ends.
    joined = [ids for name, ids in shard.calls if name == "decode" and second.id in ids]
    assert joined and all(first.id in ids for ids in joined)


async def test_waiting_served_ratio_holds_a_lone_newcomer_until_max_waiting_tokens() -> None:
    shard = FakeShard()
    batcher = make_batcher(shard, waiting_served_ratio=10.0, max_waiting_tokens=5)
    running = [batcher.submit(request(40)) for _ in range(3)]

    async def scenario():
        while not shard.calls:
            await asyncio.sleep(0)
        newcomer = batcher.submit(request(2))
        await collect(newcomer)
        return newcomer

    newcomer = await run_with(batcher, scenario())
    index = shard.calls.index(("prefill", [newcomer.id]))
    decodes_before = [c for c in shard.calls[:index] if c[0] == "decode"]
    assert len(decodes_before) >= 5
    assert all(len(ids) == 3 for _, ids in decodes_before)
    assert running


async def test_with_chunking_shards_a_newcomer_joins_at_once_and_nobody_pauses() -> None:
    shard = FakeShard(support_chunking=True)
    # the ratio would hold a lone newcomer for max_waiting_tokens steps with a TGI-style shard
    batcher = make_batcher(shard, waiting_served_ratio=10.0, max_waiting_tokens=50, prefill_joins_decode=True)
    running = [batcher.submit(request(40)) for _ in range(3)]

    async def scenario():
        while len(shard.calls) < 3:
            await asyncio.sleep(0)
        newcomer = batcher.submit(request(2))
        events = await collect(newcomer)
        return newcomer, events

    newcomer, events = await run_with(batcher, scenario())
    index = shard.calls.index(("prefill", [newcomer.id]))
    assert index <= 4, shard.calls[: index + 1]  # admitted at the next step, not after 50
    # the running requests took their step inside that prefill call, then continue with the newcomer
    assert shard.calls[index + 1] == ("prefill-carried", [e.id for e in running])
    assert [e.index for e in events] == [1, 2]
    assert shard.calls[index + 2] == ("decode", [e.id for e in running] + [newcomer.id])
    tokens = [shard.generated[e.id] for e in running]
    assert len(set(tokens)) == 1  # nobody fell behind


async def test_total_token_budget_keeps_requests_waiting_until_room_frees() -> None:
    shard = FakeShard()
    # Each request reserves 2 blocks (4 + 20 tokens -> 32 slots); the budget holds one at a time.
    batcher = make_batcher(shard, total=40, waiting_served_ratio=0.0)
    a, b = batcher.submit(request(20)), batcher.submit(request(20))

    async def scenario():
        await collect(a)
        await collect(b)

    await run_with(batcher, scenario())
    assert ("prefill", [a.id, b.id]) not in shard.calls
    assert all(not (a.id in ids and b.id in ids) for _, ids in shard.calls)


async def test_cancelled_request_is_filtered_out_at_the_next_step() -> None:
    shard = FakeShard()
    batcher = make_batcher(shard)
    keep, gone = batcher.submit(request(20)), batcher.submit(request(20))

    async def scenario():
        await asyncio.wait_for(keep.stream.next_event(), 5)
        batcher.cancel(gone)
        await collect(keep)

    await run_with(batcher, scenario())
    filters = [ids for name, ids in shard.calls if name == "filter"]
    assert filters and filters[0] == [keep.id]
    after = shard.calls[shard.calls.index(("filter", [keep.id])) + 1:]
    assert all(gone.id not in ids for _, ids in after)


async def test_cancelled_while_queued_never_reaches_the_shard() -> None:
    shard = FakeShard()
    batcher = make_batcher(shard)
    entry = batcher.submit(request(3))
    batcher.cancel(entry)
    other = batcher.submit(request(2))
    await run_with(batcher, collect(other))
    assert all(entry.id not in ids for _, ids in shard.calls)


@pytest.mark.parametrize("method", ["prefill", "decode"])
async def test_a_failed_shard_call_ends_every_affected_stream_with_an_error(method: str) -> None:
    shard = FakeShard()
    batcher = make_batcher(shard)
    shard.fail_next = method
    entries = [batcher.submit(request(10)) for _ in range(2)]

    async def scenario():
        return [await collect(e) for e in entries]

    results = await run_with(batcher, scenario())
    for events in results:
        assert isinstance(events[-1], ErrorEvent)
        assert events[-1].error_type == "generation"
    assert batcher.healthy is False
