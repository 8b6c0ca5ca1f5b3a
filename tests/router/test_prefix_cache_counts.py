"""The router's side of prefix caching: the shards' `cached_prompt_tokens` reaches the request's entry, the
Prometheus counters, the per-request log line and the prefill span (the cache itself is the shard's)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from router.batcher import Batcher, SchedulerConfig
from router.config import RouterConfig
from router.queue import Entry
from router.server import Router
from router.shard_client import step_from_proto
from router.tracing import RequestTimeline, _phase_attributes, _root_attributes
from router.types import SamplingParameters, StoppingParameters, ValidRequest
from router.validation import Validator
from tests.router.fake_shard import FakeShard
from tgi_proto import generate_pb2 as pb


def _generation(request_id: int, cached: int | None = None) -> pb.Generation:
    tokens = pb.Tokens(ids=[3], logprobs=[-0.5], texts=["a"], is_special=[False])
    if cached is None:
        return pb.Generation(request_id=request_id, tokens=tokens)
    return pb.Generation(request_id=request_id, tokens=tokens, cached_prompt_tokens=cached)


def test_the_shards_count_of_cached_prompt_tokens_reaches_the_generation() -> None:
    step = step_from_proto(pb.PrefillResponse(generations=[_generation(1, 48), _generation(2)]), received_at=0.0)
    assert [g.cached_prompt_tokens for g in step.generations] == [48, 0]  # absent on the wire: 0


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


async def test_counters_log_line_and_entry_carry_the_hit(tokenizer_dir: Path, validator: Validator,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    config = RouterConfig.parse(["--tokenizer-dir", str(tokenizer_dir), "--model-id", "tiny-model"])
    shard = FakeShard()
    lengths: list[int] = []
    hits = iter([0, 2, 3])

    def prefix_hit(request: ValidRequest) -> int:
        lengths.append(request.input_length)
        return next(hits)

    shard.prefix_hit = prefix_hit
    batcher = Batcher(shard, SchedulerConfig(max_batch_prefill_tokens=100, max_batch_total_tokens=1000,
                                             block_size=16))
    router = Router(config, validator, batcher, shard, 1000)  # type: ignore[arg-type]
    router.ready = True
    loop_task = asyncio.create_task(batcher.run())
    caplog.set_level(logging.INFO, logger="router.server")
    try:
        async with TestClient(TestServer(router.app())) as client:
            for route, inputs in (("/generate", "hello world"), ("/generate", "hello world again"),
                                  ("/generate_stream", "hello there world")):
                r = await client.post(route, json={"inputs": inputs, "parameters": {"max_new_tokens": 3}})
                assert r.status == 200
                await r.read()
            text = await (await client.get("/metrics")).text()
    finally:
        loop_task.cancel()
    # once per request (at its first token, not at each of its 3), the prompt as validation counted it
    assert _metric(text, "tgi_py_prefix_cache_prompt_tokens") == sum(lengths)
    assert _metric(text, "tgi_py_prefix_cache_hit_tokens") == 5
    assert "tgi_py_prefix_cache_hit_tokens_total" not in text  # TGI's style: counters without the suffix
    done = [r for r in caplog.records if "done:" in r.getMessage()]
    assert [getattr(r, "cached_tokens", None) for r in done] == [0, 2, 3]
    assert "cached_tokens=2 " in done[1].getMessage()
    assert [getattr(r, "input_tokens", None) for r in done] == lengths


def _entry(cached: int | None) -> Entry:
    request = ValidRequest(inputs="hi", input_ids=tuple(range(40)), sampling=SamplingParameters(),
                           stopping=StoppingParameters(max_new_tokens=4))
    entry = Entry(request)
    entry.batched_at = entry.queued_at + 0.001
    if cached is not None:  # what the batcher stamps with the first token
        entry.first_token_at = entry.queued_at + 0.002
        entry.cached_prompt_tokens = cached
    return entry


def test_the_prefill_span_carries_the_reused_token_count() -> None:
    timeline = RequestTimeline.begin("/generate")
    timeline.fill_from_entry(_entry(32))
    assert timeline.cached_prompt_tokens == 32
    prefill = _phase_attributes("prefill", timeline)
    assert prefill["gen_ai.usage.cache_read.input_tokens"] == 32 and prefill["gen_ai.usage.input_tokens"] == 40
    assert _root_attributes(timeline)["gen_ai.usage.cache_read.input_tokens"] == 32
    assert "gen_ai.usage.cache_read.input_tokens" not in _phase_attributes("queue", timeline)

    miss = RequestTimeline.begin("/generate")
    miss.fill_from_entry(_entry(0))  # a miss is a count too
    assert _phase_attributes("prefill", miss)["gen_ai.usage.cache_read.input_tokens"] == 0

    unfinished = RequestTimeline.begin("/generate")
    unfinished.fill_from_entry(_entry(None))  # no first token yet: nothing known, no attribute
    assert "gen_ai.usage.cache_read.input_tokens" not in _phase_attributes("prefill", unfinished)
