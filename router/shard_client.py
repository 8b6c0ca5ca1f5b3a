"""gRPC to every shard rank: each call goes to all ranks in parallel, rank 0's answer is used.

This is the router's edge: the only module of the router that knows protobuf. Calls take and return the
router's own types (router/types.py); the conversions are the pure functions below, tested in
tests/router/test_shard_client.py.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import grpc

from common.sockets import shard_socket_path
from router.types import (
    Batch,
    CachedBatch,
    Finished,
    FinishReason,
    Generation,
    ShardInfo,
    StepResult,
    Token,
    ValidRequest,
)
from tgi_proto import generate_pb2 as pb
from tgi_proto import generate_pb2_grpc as pb_grpc

# pb.FinishReason value -> its name in TGI's words (FINISH_REASON_EOS_TOKEN -> "eos_token").
FINISH_REASONS: dict[int, FinishReason] = {
    value: pb.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()  # type: ignore[misc]
    for value in pb.FinishReason.values()
}


# ---- router -> protobuf ------------------------------------------------------------------------------


def request_to_proto(request_id: int, request: ValidRequest) -> pb.Request:
    s = request.sampling
    return pb.Request(
        id=request_id,
        inputs=request.inputs,
        input_ids=list(request.input_ids),
        parameters=pb.NextTokenChooserParameters(
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, typical_p=s.typical_p,
            do_sample=s.do_sample, seed=s.seed or 0, repetition_penalty=s.repetition_penalty,
            frequency_penalty=s.frequency_penalty, presence_penalty=s.presence_penalty,
            grammar=s.grammar, grammar_type=pb.GRAMMAR_TYPE_LLGUIDANCE if s.grammar else pb.GRAMMAR_TYPE_NONE,
        ),
        stopping_parameters=pb.StoppingCriteriaParameters(
            max_new_tokens=request.stopping.max_new_tokens, stop_sequences=list(request.stopping.stop_sequences),
            ignore_eos_token=request.stopping.ignore_eos_token,
        ),
        prefill_logprobs=request.decoder_input_details,
        top_n_tokens=request.top_n_tokens,
    )


def batch_to_proto(batch: Batch) -> pb.Batch:
    return pb.Batch(id=batch.id, requests=[request_to_proto(i, r) for i, r in batch.requests.items()],
                    size=len(batch.requests), max_tokens=batch.max_tokens)


def cached_batch_to_proto(batch: CachedBatch) -> pb.CachedBatch:
    return pb.CachedBatch(id=batch.id, request_ids=batch.request_ids, size=batch.size, max_tokens=batch.max_tokens,
                          current_tokens=batch.current_tokens)


# ---- protobuf -> router ------------------------------------------------------------------------------


def tokens_from_proto(tokens: pb.Tokens) -> list[Token]:
    """The shard sends NaN for "no logprob" (a proto3 float cannot be absent): None here."""
    return [
        Token(i, t, None if math.isnan(lp) else lp, sp)
        for i, t, lp, sp in zip(tokens.ids, tokens.texts, tokens.logprobs, tokens.is_special, strict=False)
    ]


def cached_batch_from_proto(batch: pb.CachedBatch) -> CachedBatch:
    return CachedBatch(batch.id, tuple(batch.request_ids), batch.size, batch.max_tokens, batch.current_tokens)


def _finished_from_proto(generation: pb.Generation) -> Finished | None:
    if not generation.HasField("generated_text"):
        return None
    g = generation.generated_text
    return Finished(g.text, FINISH_REASONS.get(g.finish_reason, "length"), g.generated_tokens,
                    g.seed if g.HasField("seed") else None)


def generation_from_proto(generation: pb.Generation) -> Generation:
    """A generation of one token (see generations_from_proto for several)."""
    tokens = generation.tokens
    logprob = tokens.logprobs[0]
    # The step's generated token, built directly: per token, half the cost of tokens_from_proto's list.
    token = Token(tokens.ids[0], tokens.texts[0], None if math.isnan(logprob) else logprob, tokens.is_special[0])
    return Generation(
        generation.request_id,
        token,
        [t for top in generation.top_tokens for t in tokens_from_proto(top)] if generation.top_tokens else (),
        tokens_from_proto(generation.prefill_tokens) if generation.HasField("prefill_tokens") else (),
        _finished_from_proto(generation),
        generation.cached_prompt_tokens,
    )


def generations_from_proto(generation: pb.Generation) -> list[Generation]:
    """One router Generation per token of a shard's generation, in order: with speculation one step may
    give a request several tokens, and each is its own stream event. The prompt's tokens and the cached
    prompt count go with the first, the end with the last; top_tokens[i] belongs to token i."""
    tokens = generation.tokens
    count = len(tokens.ids)
    if count <= 1:
        return [generation_from_proto(generation)]
    top = generation.top_tokens
    out = []
    for i in range(count):
        logprob = tokens.logprobs[i]
        out.append(Generation(
            generation.request_id,
            Token(tokens.ids[i], tokens.texts[i], None if math.isnan(logprob) else logprob, tokens.is_special[i]),
            tokens_from_proto(top[i]) if i < len(top) else (),
            tokens_from_proto(generation.prefill_tokens) if i == 0 and generation.HasField("prefill_tokens") else (),
            _finished_from_proto(generation) if i == count - 1 else None,
            generation.cached_prompt_tokens if i == 0 else 0,
        ))
    return out


def step_from_proto(response: pb.PrefillResponse | pb.DecodeResponse, received_at: float) -> StepResult:
    generations: list[Generation] = []
    for g in response.generations:
        if len(g.tokens.ids) > 1:
            generations.extend(generations_from_proto(g))
        else:
            generations.append(generation_from_proto(g))
    return StepResult(
        generations=generations,
        batch=cached_batch_from_proto(response.batch) if response.HasField("batch") else None,
        forward_ns=response.forward_ns,
        sample_and_postprocess_ns=response.decode_ns,
        received_at=received_at,
        draft_tokens=response.speculative_draft_tokens,
        accepted_tokens=response.speculative_accepted_tokens,
    )


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
        first = grpc.aio.insecure_channel(f"unix://{shard_socket_path(uds_path, 0)}")
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

    async def info(self) -> ShardInfo:
        info = await self._all("Info", pb.InfoRequest(), timeout=30)
        return ShardInfo(dtype=info.dtype, device_type=info.device_type, block_size=info.block_size,
                         support_chunking=info.support_chunking)

    async def health(self, timeout: float = 5.0) -> None:
        await self._all("Health", pb.HealthRequest(), timeout=timeout)

    async def warmup(self, max_input_tokens: int, max_prefill_tokens: int, max_total_tokens: int,
                     max_batch_total_tokens: int = 0) -> int:
        response = await self._all("Warmup", pb.WarmupRequest(
            batch=pb.Batch(id=0), max_input_tokens=max_input_tokens, max_prefill_tokens=max_prefill_tokens,
            max_total_tokens=max_total_tokens, max_batch_total_tokens=max_batch_total_tokens,
        ))
        return response.max_supported_total_tokens

    async def prefill(self, batch: Batch, cached: CachedBatch | None = None) -> StepResult:
        """Prefill `batch`; with `cached`, its requests step too and the answer's batch is the merged one."""
        request = pb.PrefillRequest(batch=batch_to_proto(batch))
        if cached is not None:
            request.cached_batch.CopyFrom(cached_batch_to_proto(cached))
        response = await self._all("Prefill", request)
        return step_from_proto(response, time.monotonic())

    async def decode(self, batches: Sequence[CachedBatch]) -> StepResult:
        """One token for every request of `batches`, which the shards merge into one."""
        response = await self._all("Decode", pb.DecodeRequest(batches=[cached_batch_to_proto(b) for b in batches]))
        return step_from_proto(response, time.monotonic())

    async def filter_batch(self, batch_id: int, request_ids: Sequence[int]) -> CachedBatch | None:
        response = await self._all("FilterBatch", pb.FilterBatchRequest(batch_id=batch_id,
                                                                         request_ids=request_ids))
        return cached_batch_from_proto(response.batch) if response.HasField("batch") else None

    async def clear_cache(self, batch_id: int | None = None) -> None:
        request = pb.ClearCacheRequest() if batch_id is None else pb.ClearCacheRequest(id=batch_id)
        await self._all("ClearCache", request, timeout=30)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
