"""An in-process stand-in for the shards, for scheduling tests only.

The real path (gRPC, processes, the model) is covered by tests/e2e, and the protobuf conversions of
router/shard_client.py by tests/router/test_shard_client.py; this fake answers the client's calls with the
same router types, so the batcher's decisions can be checked step by step and deterministically.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from router.shard_client import ShardError
from router.types import Batch, CachedBatch, Finished, Generation, StepResult, Token, ValidRequest


class FakeShard:
    def __init__(self, support_chunking: bool = False) -> None:
        # like the real shard's Info.support_chunking: Prefill then steps the cached batch it is given
        self.support_chunking = support_chunking
        # batch id -> (request id, max_new_tokens) of the requests it caches
        self.batches: dict[int, list[tuple[int, int]]] = {}
        self.generated: dict[int, int] = {}
        self.calls: list[tuple[str, list[int]]] = []
        self.fail_next: str | None = None
        # the prefix-cache hit each new request reports on its first generation (cached_prompt_tokens)
        self.prefix_hit: Callable[[ValidRequest], int] = lambda request: 0
        self._hits: dict[int, int] = {}

    async def _call(self, method: str) -> None:
        # A real RPC always suspends the caller; without this the batcher would never let handlers run.
        await asyncio.sleep(0)
        if self.fail_next == method:
            self.fail_next = None
            raise ShardError(f"{method} exploded", None)

    def _step(self, requests: list[tuple[int, int]]) -> list[Generation]:
        generations = []
        for request_id, max_new_tokens in requests:
            n = self.generated.get(request_id, 0) + 1
            self.generated[request_id] = n
            finished = None
            if n >= max_new_tokens:
                finished = Finished("".join(f"t{i} " for i in range(1, n + 1)), "length", n, None)
            generations.append(Generation(request_id, Token(n, f"t{n} ", -0.5, False), finished=finished,
                                          cached_prompt_tokens=self._hits.pop(request_id, 0)))
        return generations

    def _store(self, batch_id: int, requests: list[tuple[int, int]]) -> CachedBatch | None:
        alive = [r for r in requests if self.generated[r[0]] < r[1]]
        if not alive:
            self.batches.pop(batch_id, None)
            return None
        self.batches[batch_id] = alive
        return CachedBatch(batch_id, tuple(r[0] for r in alive), len(alive), 0)

    def _answer(self, batch_id: int, requests: list[tuple[int, int]]) -> StepResult:
        generations = self._step(requests)
        return StepResult(generations, self._store(batch_id, requests), 0, 0, time.monotonic())

    async def prefill(self, batch: Batch, cached: CachedBatch | None = None) -> StepResult:
        self.calls.append(("prefill", list(batch.requests)))
        await self._call("prefill")
        carried = self.batches.pop(cached.id, []) if cached is not None and self.support_chunking else []
        if carried:
            self.calls.append(("prefill-carried", [r[0] for r in carried]))
        new = [(request_id, r.stopping.max_new_tokens) for request_id, r in batch.requests.items()]
        self._hits.update((request_id, self.prefix_hit(r)) for request_id, r in batch.requests.items())
        return self._answer(batch.id, carried + new)

    async def decode(self, batches: Sequence[CachedBatch]) -> StepResult:
        requests = [r for b in batches for r in self.batches.pop(b.id, [])]
        self.calls.append(("decode", [r[0] for r in requests]))
        await self._call("decode")
        return self._answer(batches[0].id, requests)

    async def filter_batch(self, batch_id: int, request_ids: Sequence[int]) -> CachedBatch | None:
        self.calls.append(("filter", list(request_ids)))
        keep = [r for r in self.batches.pop(batch_id, []) if r[0] in set(request_ids)]
        if not keep:
            return None
        self.batches[batch_id] = keep
        return CachedBatch(batch_id, tuple(r[0] for r in keep), len(keep), 0)

    async def clear_cache(self, batch_id: int | None = None) -> None:
        self.batches.clear()
