"""When a shard failure reaches a client as an HTTP status and when as an event of an open stream.

A streaming response opens (its headers go out) once the request's prefill is sent to the shards, so its
first token can be written like every other; a failure from then on is an SSE error event (as TGI reports
every streaming error). A non-streaming request keeps its real status.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from router.batcher import Batcher, SchedulerConfig
from router.config import RouterConfig
from router.server import Router
from router.validation import Validator
from tests.router.fake_shard import FakeShard


async def test_a_prefill_failure_is_424_for_generate_and_an_error_event_for_generate_stream(
        tokenizer_dir: Path, validator: Validator) -> None:
    config = RouterConfig.parse(["--tokenizer-dir", str(tokenizer_dir), "--model-id", "tiny-model"])
    shard = FakeShard()
    batcher = Batcher(shard, SchedulerConfig(max_batch_prefill_tokens=100, max_batch_total_tokens=1000,
                                             block_size=16))
    router = Router(config, validator, batcher, shard, 1000)  # type: ignore[arg-type]
    router.ready = True
    loop_task = asyncio.create_task(batcher.run())
    try:
        async with TestClient(TestServer(router.app())) as client:
            shard.fail_next = "prefill"
            r = await client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
            assert r.status == 424
            assert (await r.json())["error_type"] == "generation"

            shard.fail_next = "prefill"
            r = await client.post("/generate_stream", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            events = [json.loads(line[len("data:"):]) for line in (await r.text()).split("\n\n")
                      if line.startswith("data:")]
            assert len(events) == 1 and events[0]["error_type"] == "generation", events

            # the shard is back: a stream after the failure is whole
            r = await client.post("/generate_stream", json={"inputs": "hi", "parameters": {"max_new_tokens": 3}})
            events = [json.loads(line[len("data:"):]) for line in (await r.text()).split("\n\n")
                      if line.startswith("data:")]
            assert [e["index"] for e in events] == [1, 2, 3] and events[-1]["generated_text"] is not None
    finally:
        loop_task.cancel()
