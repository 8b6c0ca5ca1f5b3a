"""An in-process stand-in for the shards, for scheduling tests only.

The real path (gRPC, processes, the model) is covered by tests/e2e; this fake answers the same calls with
the same message types so the batcher's decisions can be checked step by step and deterministically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from router.shard_client import ShardError
from tgi_proto import generate_pb2 as pb


class FakeShard:
    def __init__(self, support_chunking: bool = False) -> None:
        # like the real shard's Info.support_chunking: Prefill then steps the cached batch it is given
        self.support_chunking = support_chunking
        self.batches: dict[int, list[pb.Request]] = {}
        self.generated: dict[int, int] = {}
        self.calls: list[tuple[str, list[int]]] = []
        self.fail_next: str | None = None

    async def _call(self, method: str) -> None:
        # A real RPC always suspends the caller; without this the batcher would never let handlers run.
        await asyncio.sleep(0)
        if self.fail_next == method:
            self.fail_next = None
            raise ShardError(f"{method} exploded", None)

    def _step(self, requests: list[pb.Request]) -> list[pb.Generation]:
        generations = []
        for r in requests:
            n = self.generated.get(r.id, 0) + 1
            self.generated[r.id] = n
            g = pb.Generation(request_id=r.id, tokens=pb.Tokens(ids=[n], logprobs=[-0.5], texts=[f"t{n} "],
                                                                is_special=[False]))
            if n >= r.stopping_parameters.max_new_tokens:
                g.generated_text.CopyFrom(pb.GeneratedText(text="".join(f"t{i} " for i in range(1, n + 1)),
                                                           generated_tokens=n, finish_reason=0))
            generations.append(g)
        return generations

    def _store(self, batch_id: int, requests: list[pb.Request]) -> pb.CachedBatch | None:
        alive = [r for r in requests if self.generated[r.id] < r.stopping_parameters.max_new_tokens]
        if not alive:
            self.batches.pop(batch_id, None)
            return None
        self.batches[batch_id] = alive
        return pb.CachedBatch(id=batch_id, request_ids=[r.id for r in alive], size=len(alive))

    async def prefill(self, batch: pb.Batch, cached: pb.CachedBatch | None = None) -> pb.PrefillResponse:
        self.calls.append(("prefill", [r.id for r in batch.requests]))
        await self._call("prefill")
        carried = self.batches.pop(cached.id, []) if cached is not None and self.support_chunking else []
        if carried:
            self.calls.append(("prefill-carried", [r.id for r in carried]))
        requests = carried + list(batch.requests)
        response = pb.PrefillResponse(generations=self._step(requests))
        stored = self._store(batch.id, requests)
        if stored is not None:
            response.batch.CopyFrom(stored)
        return response

    async def decode(self, batches: Sequence[pb.CachedBatch]) -> pb.DecodeResponse:
        requests = [r for b in batches for r in self.batches.pop(b.id, [])]
        self.calls.append(("decode", [r.id for r in requests]))
        await self._call("decode")
        response = pb.DecodeResponse(generations=self._step(requests))
        stored = self._store(batches[0].id, requests)
        if stored is not None:
            response.batch.CopyFrom(stored)
        return response

    async def filter_batch(self, batch_id: int, request_ids: Sequence[int]) -> pb.CachedBatch | None:
        self.calls.append(("filter", list(request_ids)))
        keep = [r for r in self.batches.pop(batch_id, []) if r.id in set(request_ids)]
        if not keep:
            return None
        self.batches[batch_id] = keep
        return pb.CachedBatch(id=batch_id, request_ids=[r.id for r in keep], size=len(keep))

    async def clear_cache(self, batch_id: int | None = None) -> None:
        self.batches.clear()
