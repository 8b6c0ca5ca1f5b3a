"""gRPC to every shard rank: each call goes to all ranks in parallel, rank 0's answer is used."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from tgi_proto import generate_pb2 as pb
from tgi_proto import generate_pb2_grpc as pb_grpc


class ShardError(RuntimeError):
    """A shard call failed; `unavailable` means the shard process is gone or unreachable."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def unavailable(self) -> bool:
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, None)

    @property
    def request_level(self) -> bool:
        """The call was refused for what it asked (e.g. no KV room); the shard state is intact."""
        return self.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)


class ShardClient:
    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self._channels = channels
        self._stubs = [pb_grpc.TextGenerationServiceStub(c) for c in channels]

    @classmethod
    async def connect(cls, uds_path: str, timeout: float = 30.0) -> ShardClient:
        """Connect to rank 0, then to every rank it lists."""
        first = grpc.aio.insecure_channel(f"unix://{uds_path}-0")
        stub = pb_grpc.TextGenerationServiceStub(first)
        response = await stub.ServiceDiscovery(pb.ServiceDiscoveryRequest(), timeout=timeout,
                                               wait_for_ready=True)
        await first.close()
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        return cls([grpc.aio.insecure_channel(url, options=options) for url in response.urls])

    @property
    def world_size(self) -> int:
        return len(self._stubs)

    async def _all(self, method: str, request, timeout: float | None = None):
        calls = [asyncio.ensure_future(getattr(stub, method)(request, timeout=timeout)) for stub in self._stubs]
        # Fail fast: when one rank dies the others block in a collective, so waiting for all would hang.
        done, pending = await asyncio.wait(calls, return_when=asyncio.FIRST_EXCEPTION)
        for call in pending:
            call.cancel()
        for call in calls:
            if call in done and call.exception() is not None:
                error = call.exception()
                if isinstance(error, grpc.aio.AioRpcError):
                    raise ShardError(f"shard {method} failed: {error.details()}", error.code())
                raise ShardError(f"shard {method} failed: {error!r}")
        return calls[0].result()

    async def info(self) -> pb.InfoResponse:
        return await self._all("Info", pb.InfoRequest(), timeout=30)

    async def health(self, timeout: float = 5.0) -> None:
        await self._all("Health", pb.HealthRequest(), timeout=timeout)

    async def warmup(self, max_input_tokens: int, max_prefill_tokens: int, max_total_tokens: int,
                     max_batch_total_tokens: int = 0) -> int:
        response = await self._all("Warmup", pb.WarmupRequest(
            batch=pb.Batch(id=0), max_input_tokens=max_input_tokens, max_prefill_tokens=max_prefill_tokens,
            max_total_tokens=max_total_tokens, max_batch_total_tokens=max_batch_total_tokens,
        ))
        return response.max_supported_total_tokens

    async def prefill(self, batch: pb.Batch, cached: pb.CachedBatch | None = None) -> pb.PrefillResponse:
        request = pb.PrefillRequest(batch=batch)
        if cached is not None:
            request.cached_batch.CopyFrom(cached)
        return await self._all("Prefill", request)

    async def decode(self, batches: Sequence[pb.CachedBatch]) -> pb.DecodeResponse:
        return await self._all("Decode", pb.DecodeRequest(batches=batches))

    async def filter_batch(self, batch_id: int, request_ids: Sequence[int]) -> pb.CachedBatch | None:
        response = await self._all("FilterBatch", pb.FilterBatchRequest(batch_id=batch_id,
                                                                         request_ids=request_ids))
        return response.batch if response.HasField("batch") else None

    async def clear_cache(self, batch_id: int | None = None) -> None:
        request = pb.ClearCacheRequest() if batch_id is None else pb.ClearCacheRequest(id=batch_id)
        await self._all("ClearCache", request, timeout=30)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
