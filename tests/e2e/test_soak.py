"""Soak: hundreds of mixed requests from many clients; abandoned streams, bursts, malformed bodies.

Every answer must be 200, a 4xx with a JSON error, or a well-formed stream; never a 5xx or a hang;
afterwards no slot is leaked and the queue is empty.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.server import LaunchedServer, launch

MAX_CONCURRENT = 8
TOTAL_REQUESTS = 320
CLIENTS = 12


@pytest.fixture(scope="module")
def soak_server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    s = launch(tiny_llama, "--max-concurrent-requests", str(MAX_CONCURRENT), "--max-input-tokens", "64",
               "--max-total-tokens", "512", "--payload-limit", "100000")
    yield s
    assert s.stop() == 0, s.log()


def malformed(rng: random.Random) -> tuple[bytes, str]:
    return rng.choice([
        (b"{not json", "/generate"),
        (b'{"inputs": 5}', "/generate_stream"),
        (b'{"inputs": "hi", "parameters": {"max_new_tokens": -1}}', "/generate"),
        (b'{"inputs": "hi", "parameters": {"max_new_tokens": 100000}}', "/"),
        (b'{"inputs": "hi", "parameters": {"top_p": 7}}', "/generate_stream"),
        (b'{"messages": "nope"}', "/v1/chat/completions"),
        (json.dumps({"inputs": "x" * 200_000}).encode(), "/generate"),
        (b"[]", "/generate"),
    ])


async def one_request(session: aiohttp.ClientSession, url: str, rng: random.Random, outcomes: Counter) -> None:
    """One request; a 429 is counted, then retried after an exponential back-off as a real client would."""
    for tries in range(12):
        if await attempt(session, url, rng, outcomes):
            return
        outcomes["overloaded"] += 1
        await asyncio.sleep(rng.uniform(0.05, 0.1) * 2 ** min(tries, 5))
    outcomes["gave_up"] += 1


async def attempt(session: aiohttp.ClientSession, url: str, rng: random.Random, outcomes: Counter) -> bool:
    """False when refused with 429 overloaded; True when the request ran its course."""
    kind = rng.choices(["abandon", "stream", "generate", "chat", "malformed"], [30, 20, 20, 15, 15])[0]
    max_new = rng.randint(1, 60)
    if kind == "malformed":
        data, route = malformed(rng)
        async with session.post(url + route, data=data, headers={"Content-Type": "application/json"}) as r:
            body = await r.read()
            assert r.status in (413, 422, 429), (route, r.status, body[:200])
            error = json.loads(body)
            assert {"error", "error_type"} <= set(error)
            if r.status == 429:
                return False
            outcomes[f"malformed:{r.status}"] += 1
        return True
    if kind == "chat":
        route, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                               "max_tokens": max_new, "stream": True, "temperature": 0}
    elif kind == "generate":
        route, body = "/generate", {"inputs": "Hello world", "parameters": {"max_new_tokens": max_new}}
    else:
        route, body = "/generate_stream", {"inputs": "Hello world", "parameters": {"max_new_tokens": max_new + 20}}
    async with session.post(url + route, json=body) as r:
        if r.status == 429:
            error = await r.json()
            assert error["error_type"] == "overloaded"
            return False
        assert r.status == 200, (route, r.status, await r.text())
        if kind == "generate":
            assert "generated_text" in await r.json()
            outcomes["generate"] += 1
            return True
        events = 0
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                outcomes[kind] += 1
                return True
            event = json.loads(payload)
            assert "error" not in event, event
            events += 1
            if kind == "abandon" and events >= rng.randint(1, 3):
                outcomes["abandoned"] += 1
                return True  # leaving the context closes the connection mid-stream
            if kind == "stream" and event.get("generated_text") is not None:
                outcomes["stream"] += 1
                return True
        raise AssertionError(f"{kind} stream ended without its last event after {events} events")


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def soak(url: str) -> Counter:
    rng = random.Random(1234)
    outcomes: Counter = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(TOTAL_REQUESTS):
        queue.put_nowait(i)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def client(seed: int) -> None:
            client_rng = random.Random(seed)
            while not queue.empty():
                queue.get_nowait()
                await one_request(session, url, client_rng, outcomes)

        await asyncio.wait_for(asyncio.gather(*(client(rng.randint(0, 1 << 30)) for _ in range(CLIENTS))), 240)
        # Nothing leaked: the batch and queue empty out, then the full concurrency is available again.
        for _ in range(100):
            if await metric(session, url, "tgi_batch_current_size") == 0 and \
                    await metric(session, url, "tgi_queue_size") == 0:
                break
            await asyncio.sleep(0.1)
        assert await metric(session, url, "tgi_queue_size") == 0
        assert await metric(session, url, "tgi_batch_current_size") == 0
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 30}}

        async def full(_: int) -> int:
            async with session.post(url + "/generate", json=body) as r:
                return r.status

        statuses = await asyncio.gather(*(full(i) for i in range(MAX_CONCURRENT)))
        assert statuses == [200] * MAX_CONCURRENT
        assert await metric(session, url, "tgi_queue_size") == 0
    return outcomes


def test_soak_mixed_traffic_never_5xx_hangs_or_leaks(soak_server: LaunchedServer) -> None:
    outcomes = asyncio.run(soak(soak_server.url))
    print("soak outcomes:", dict(outcomes))
    assert sum(n for k, n in outcomes.items() if k not in ("overloaded", "gave_up")) + outcomes["gave_up"] \
        == TOTAL_REQUESTS
    assert outcomes["abandoned"] >= 60 and outcomes["overloaded"] > 0
    assert outcomes["stream"] + outcomes["generate"] + outcomes["chat"] >= 120
    assert "Traceback" not in soak_server.log()
