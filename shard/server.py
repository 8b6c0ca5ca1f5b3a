"""gRPC servicer: hands the work to the engine on one worker thread, converting messages both ways.

The only place in the shard that knows protobuf: requests become shard/types.py records before the
engine sees them, and its generations and batches become messages after it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from common.sampling import SamplingParameters
from shard.block_manager import OutOfBlocks
from shard.engine import Engine
from shard.grammar import llguidance_grammar
from shard.types import CachedBatch, Generation, Request, StepResult, Tokens
from tgi_proto import generate_pb2 as pb
from tgi_proto import generate_pb2_grpc as pb_grpc

log = logging.getLogger("shard.server")


GRAMMAR_KIND_OF_PB = {pb.GRAMMAR_TYPE_JSON: "json", pb.GRAMMAR_TYPE_REGEX: "regex",
                      pb.GRAMMAR_TYPE_LLGUIDANCE: "llguidance"}


def _unset_to_one(value: float) -> float:
    # proto3 floats default to 0.0, which for these fields means "not set", never a real value.
    return value if value != 0.0 else 1.0


def sampling_parameters_from_pb(p: pb.NextTokenChooserParameters) -> SamplingParameters:
    return SamplingParameters(
        temperature=_unset_to_one(p.temperature),
        top_k=max(int(p.top_k), 0),
        top_p=_unset_to_one(p.top_p),
        typical_p=_unset_to_one(p.typical_p),
        do_sample=bool(p.do_sample),
        seed=int(p.seed),
        repetition_penalty=_unset_to_one(p.repetition_penalty),
        frequency_penalty=float(p.frequency_penalty),
        presence_penalty=float(p.presence_penalty),
        grammar=llguidance_grammar(GRAMMAR_KIND_OF_PB.get(p.grammar_type, "llguidance"), p.grammar)
        if p.grammar else "",
    )


def request_from_pb(request: pb.Request) -> Request:
    stopping = request.stopping_parameters
    return Request(
        id=request.id, input_ids=list(request.input_ids), inputs=request.inputs, truncate=request.truncate,
        parameters=sampling_parameters_from_pb(request.parameters), max_new_tokens=stopping.max_new_tokens,
        stop_sequences=tuple(stopping.stop_sequences), ignore_eos_token=stopping.ignore_eos_token,
        top_n_tokens=request.top_n_tokens, prefill_logprobs=request.prefill_logprobs,
    )


def tokens_to_pb(tokens: Tokens) -> pb.Tokens:
    return pb.Tokens(ids=tokens.ids, logprobs=tokens.logprobs, texts=tokens.texts, is_special=tokens.is_special)


def generation_to_pb(generation: Generation) -> pb.Generation:
    out = pb.Generation(request_id=generation.request_id, tokens=tokens_to_pb(generation.tokens),
                        top_tokens=[tokens_to_pb(t) for t in generation.top_tokens],
                        cached_prompt_tokens=generation.cached_prompt_tokens)
    if generation.prefill_tokens is not None:
        out.prefill_tokens.CopyFrom(tokens_to_pb(generation.prefill_tokens))
    done = generation.generated_text
    if done is not None:
        out.generated_text.CopyFrom(pb.GeneratedText(text=done.text, generated_tokens=done.generated_tokens,
                                                     finish_reason=int(done.finish_reason)))
        if done.seed is not None:
            out.generated_text.seed = done.seed
    return out


def cached_batch_to_pb(batch: CachedBatch) -> pb.CachedBatch:
    return pb.CachedBatch(id=batch.id, request_ids=batch.request_ids, size=batch.size, max_tokens=batch.max_tokens,
                          current_tokens=batch.current_tokens)


class TextGenerationService(pb_grpc.TextGenerationServiceServicer):
    def __init__(self, engine: Engine, info: pb.InfoResponse, urls: list[str],
                 engine_thread: ThreadPoolExecutor) -> None:
        self.engine = engine
        self.info = info
        self.urls = urls
        # One thread (the one that built the engine): the engine is not re-entrant, every rank must run
        # steps in the same order, and the event loop stays free to answer Health while a step runs.
        self._worker = engine_thread
        self._last_log = 0.0

    async def _run(self, context: grpc.aio.ServicerContext, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        except OutOfBlocks as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except MemoryError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Exception as exc:
            log.exception("engine call failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    async def Info(self, request, context):
        return self.info

    async def Health(self, request, context):
        return pb.HealthResponse()

    async def ServiceDiscovery(self, request, context):
        return pb.ServiceDiscoveryResponse(urls=self.urls)

    async def ClearCache(self, request, context):
        await self._run(context, self.engine.clear, request.id if request.HasField("id") else None)
        return pb.ClearCacheResponse()

    async def FilterBatch(self, request, context):
        batch = await self._run(context, self.engine.filter, request.batch_id, list(request.request_ids))
        if batch is None:
            return pb.FilterBatchResponse()
        return pb.FilterBatchResponse(batch=cached_batch_to_pb(batch))

    async def Warmup(self, request, context):
        total = await self._run(context, self.engine.warmup, request.max_input_tokens, request.max_prefill_tokens,
                                request.max_batch_total_tokens)
        log.info("warmup done: KV cache holds %d tokens", total)
        return pb.WarmupResponse(max_supported_total_tokens=total, max_input_tokens=request.max_input_tokens,
                                 max_total_tokens=request.max_total_tokens)

    async def Prefill(self, request, context):
        start = time.perf_counter_ns()
        result, generations = await self._run(context, self._prefill, request)
        self._log_step("prefill", result, start)
        return self._response(pb.PrefillResponse, result, generations, start)

    async def Decode(self, request, context):
        start = time.perf_counter_ns()
        result, generations = await self._run(context, self._decode, request)
        self._log_step("decode", result, start)
        return self._response(pb.DecodeResponse, result, generations, start)

    # On the engine's thread, as the engine built the messages before: the event loop stays free.
    def _prefill(self, request: pb.PrefillRequest) -> tuple[StepResult, list[pb.Generation]]:
        cached = request.cached_batch.id if request.HasField("cached_batch") else None
        result = self.engine.prefill(request.batch.id, [request_from_pb(r) for r in request.batch.requests], cached)
        return result, [generation_to_pb(g) for g in result.generations]

    def _decode(self, request: pb.DecodeRequest) -> tuple[StepResult, list[pb.Generation]]:
        result = self.engine.decode([batch.id for batch in request.batches])
        return result, [generation_to_pb(g) for g in result.generations]

    @staticmethod
    def _response(cls, result: StepResult, generations: list[pb.Generation], start: int):
        # decode_ns is the wire's name for the time after the forward (sampling, detokenizing, stop checks).
        response = cls(generations=generations, forward_ns=result.forward_ns,
                       decode_ns=result.sample_and_postprocess_ns, total_ns=time.perf_counter_ns() - start,
                       speculative_draft_tokens=result.draft_tokens,
                       speculative_accepted_tokens=result.accepted_tokens)
        if result.batch is not None:
            response.batch.CopyFrom(cached_batch_to_pb(result.batch))
        return response

    def _log_step(self, method: str, result: StepResult, start: int) -> None:
        seconds = (time.perf_counter_ns() - start) / 1e9
        size = len(result.generations)
        # Bytes of weights read per forward / its time: how close a step is to the memory-bandwidth floor.
        bandwidth = self.engine.weight_bytes / (result.forward_ns / 1e9) / 1e9 if result.forward_ns else 0.0
        now = time.monotonic()
        if now - self._last_log > 5.0:
            self._last_log = now
            level = logging.INFO
        elif log.isEnabledFor(logging.DEBUG):
            level = logging.DEBUG
        else:
            return
        # Prompt tokens of the requests that got their first token in this step that the prefix cache held.
        reused = sum(g.cached_prompt_tokens for g in result.generations)
        # The figures as fields too, for --json-output
        fields = {"method": method, "batch_size": size, "step_ms": round(seconds * 1e3, 2),
                  "forward_ms": round(result.forward_ns / 1e6, 2), "weights_gbs": round(bandwidth, 2),
                  "reused_prompt_tokens": reused}
        if not self.engine.speculate:
            log.log(level, "%s batch=%d step=%.1fms forward=%.1fms weights=%.1fGB/s reused=%d", method, size,
                    seconds * 1e3, result.forward_ns / 1e6, bandwidth, reused, extra=fields)
            return
        # Speculation: this step's drafts accepted/verified, and the acceptance rate since the start.
        totals = self.engine.drafter.totals
        fields.update(draft_tokens=result.draft_tokens, accepted_tokens=result.accepted_tokens,
                      acceptance_total=round(totals.acceptance, 4))
        log.log(level, "%s batch=%d step=%.1fms forward=%.1fms weights=%.1fGB/s reused=%d drafts=%d/%d "
                "acceptance=%.0f%% (%d/%d since start)", method, size, seconds * 1e3, result.forward_ns / 1e6,
                bandwidth, reused, result.accepted_tokens, result.draft_tokens, totals.acceptance * 100,
                totals.accepted, totals.drafted, extra=fields)
