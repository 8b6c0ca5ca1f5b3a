"""The closed-loop sweep: for each target, for each concurrency level, C workers that each send their
next request as soon as the previous one ends."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from tqdm import tqdm

from bench.apis import GenerationSettings, Target, build_body, send_request
from bench.prompts import Prompt
from bench.stats import LevelStats, RequestResult, aggregate


@dataclass
class RunConfig:
    concurrency: list[int]
    settings: GenerationSettings
    prompts: list[Prompt]
    requests_per_level: int | None = None  # None: 4 x concurrency, at least 8 (unless duration)
    duration: float | None = None  # seconds of sending per level; wins over requests_per_level
    warmup: int = 1  # requests per worker before each level's measurement, not recorded
    request_timeout: float = 600.0
    error_backoff: float = 0.1  # a worker whose request failed waits this long before its next
    headers: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    save_requests: bool = False  # keep every request's row in the results
    # reuse connections between requests; off by default: a new connection per request costs ~0.1 ms
    # on loopback, the same for every server, while llama.cpp's server answered reused connections
    # tens of ms later and closed some under the client (see docs/benchmarks.md)
    keep_alive: bool = False

    def level_requests(self, concurrency: int) -> int | None:
        if self.duration is not None:
            return None
        if self.requests_per_level is not None:
            return self.requests_per_level
        return max(8, 4 * concurrency)


@dataclass
class LevelRun:
    target: str
    concurrency: int
    results: list[RequestResult]
    wall_start: float
    wall_end: float

    def stats(self, expected_tokens: int | None = None, records: bool = False) -> LevelStats:
        stats = aggregate(self.target, self.concurrency, self.results, self.wall_start, self.wall_end,
                          expected_tokens=expected_tokens)
        if records:
            stats.request_records = [r.record(self.wall_start) for r in sorted(self.results, key=lambda r: r.start)]
        return stats


class TargetRunner:
    """Sends one target's requests; prompts are taken in a fixed order across the whole run so that
    every target sees the same prompts for the same request numbers, and none repeats while the
    prompt list lasts (servers with prompt caches cannot reuse an earlier request's prefill)."""

    def __init__(self, session: aiohttp.ClientSession, target: Target, config: RunConfig) -> None:
        self.session = session
        self.target = target
        self.config = config
        self._prompt_index = itertools.count()

    def next_body(self, ignore_eos: bool | None = None) -> dict[str, Any]:
        prompt = self.config.prompts[next(self._prompt_index) % len(self.config.prompts)]
        send = self.target.send_ignore_eos if ignore_eos is None else ignore_eos
        return build_body(self.target, prompt.text, self.config.settings, send)

    async def send(self, body: dict[str, Any]) -> RequestResult:
        return await send_request(self.session, self.target, body, self.config.request_timeout,
                                  self.config.headers)

    async def prepare(self) -> bool:
        """Look the server up, settle `ignore_eos`, and check that one request succeeds.
        Returns False (with `target.error` set) when the target cannot be benchmarked."""
        target = self.target
        await self._server_info()
        target.send_ignore_eos = target.ignore_eos in ("auto", "on")
        probe = await self.send(self.next_body())
        # a strict server refuses the unknown field as a bad request (transformers serve: 422)
        if probe.error in ("http_400", "http_422") and target.ignore_eos == "auto" and target.send_ignore_eos:
            retry = await self.send(self.next_body(ignore_eos=False))
            if retry.ok:
                target.send_ignore_eos = False
                target.notes.append(f"the server refused `ignore_eos` ({probe.error}: "
                                    f"{(probe.error_detail or '')[:160]}); sent without it, so outputs "
                                    f"may stop at EOS before --output-tokens")
            probe = retry
        if not probe.ok:
            target.error = f"probe request failed: {probe.error} {(probe.error_detail or '')[:300]}".strip()
            return False
        return True

    async def _server_info(self) -> None:
        """Record what the server says about itself (TGI `/info`, OpenAI `/v1/models`), and pick the
        OpenAI `model` from `/v1/models` when the spec did not name one."""
        target = self.target
        routes = ["/info"] if target.api == "tgi" else ["/v1/models", "/info"]
        for route in routes:
            try:
                async with self.session.get(target.base_url + route, headers=self.config.headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as response:
                    if response.status != 200:
                        continue
                    info = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if route == "/info" and isinstance(info, dict):
                keys = ("model_id", "model_sha", "version", "sha", "max_concurrent_requests",
                        "max_batch_total_tokens", "max_total_tokens", "router")
                target.server_info["info"] = {k: info[k] for k in keys if k in info}
            elif route == "/v1/models" and isinstance(info, dict):
                ids = [m.get("id") for m in info.get("data") or [] if isinstance(m, dict)]
                target.server_info["models"] = ids[:10]
                if target.model is None and ids and isinstance(ids[0], str):
                    target.model = ids[0]

    async def run_level(self, concurrency: int) -> LevelRun:
        config = self.config
        label = f"{self.target.name} c={concurrency}"
        if config.warmup > 0:
            await asyncio.gather(*(self._warm(config.warmup) for _ in range(concurrency)))
        total = config.level_requests(concurrency)
        results: list[RequestResult] = []
        bar = tqdm(total=total, desc=label, unit="req", disable=not config.progress, leave=True,
                   dynamic_ncols=True)
        remaining = itertools.count()
        wall_start = time.perf_counter()
        deadline = wall_start + config.duration if config.duration is not None else None

        def more() -> bool:
            if deadline is not None:
                return time.perf_counter() < deadline
            assert total is not None
            return next(remaining) < total

        async def worker() -> None:
            while more():
                result = await self.send(self.next_body())
                results.append(result)
                bar.update(1)
                if not result.ok:
                    bar.set_postfix(errors=sum(not r.ok for r in results), refresh=False)
                    if config.error_backoff > 0:
                        await asyncio.sleep(config.error_backoff)

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            bar.close()
        wall_end = max((r.end for r in results), default=time.perf_counter())
        return LevelRun(self.target.name, concurrency, results, wall_start, wall_end)

    async def _warm(self, count: int) -> None:
        for _ in range(count):
            await self.send(self.next_body())


async def for_each_target(targets: list[Target], config: RunConfig,
                          work: Callable[[TargetRunner], Awaitable[list[LevelStats]]]) -> list[LevelStats]:
    """`work` for every target that answers its probe, one target at a time (so they never compete for
    the machine), each with its own connections."""
    stats: list[LevelStats] = []
    for target in targets:
        # limit=0: unlimited, as aiohttp's default of 100 connections would queue requests client-side
        connector = aiohttp.TCPConnector(limit=0, force_close=not config.keep_alive)
        async with aiohttp.ClientSession(connector=connector, read_bufsize=2**20) as session:
            runner = TargetRunner(session, target, config)
            if not await runner.prepare():
                tqdm.write(f"tgi-bench: skipping {target.name}: {target.error}")
                continue
            stats += await work(runner)
    return stats


async def run_benchmark(targets: list[Target], config: RunConfig,
                        on_level: Callable[[LevelStats], None] | None = None) -> list[LevelStats]:
    """Every level of every target, one target at a time."""

    async def sweep(runner: TargetRunner) -> list[LevelStats]:
        stats = []
        for concurrency in config.concurrency:
            level = await runner.run_level(concurrency)
            level_stats = level.stats(expected_tokens=config.settings.output_tokens, records=config.save_requests)
            stats.append(level_stats)
            if on_level is not None:
                on_level(level_stats)
        return stats

    return await for_each_target(targets, config, sweep)
