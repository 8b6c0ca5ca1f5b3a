"""gRPC servicer: converts messages and hands the work to the engine on one worker thread."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from shard.engine import Engine, StepResult
from shard.kv_cache import OutOfBlocks
from tgi_proto import generate_pb2 as pb
from tgi_proto import generate_pb2_grpc as pb_grpc

log = logging.getLogger("shard.server")


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
        return pb.FilterBatchResponse(batch=batch) if batch is not None else pb.FilterBatchResponse()

    async def Warmup(self, request, context):
        total = await self._run(context, self.engine.warmup, request.max_input_tokens, request.max_prefill_tokens,
                                request.max_batch_total_tokens)
        log.info("warmup done: KV cache holds %d tokens", total)
        return pb.WarmupResponse(max_supported_total_tokens=total, max_input_tokens=request.max_input_tokens,
                                 max_total_tokens=request.max_total_tokens)

    async def Prefill(self, request, context):
        start = time.perf_counter_ns()
        cached = request.cached_batch if request.HasField("cached_batch") else None
        result: StepResult = await self._run(context, self.engine.prefill, request.batch, cached)
        self._log_step("prefill", result, start)
        return self._response(pb.PrefillResponse, result, start)

    async def Decode(self, request, context):
        start = time.perf_counter_ns()
        result: StepResult = await self._run(context, self.engine.decode, list(request.batches))
        self._log_step("decode", result, start)
        return self._response(pb.DecodeResponse, result, start)

    @staticmethod
    def _response(cls, result: StepResult, start: int):
        response = cls(generations=result.generations, forward_ns=result.forward_ns,
                       decode_ns=result.decode_ns, total_ns=time.perf_counter_ns() - start)
        if result.batch is not None:
            response.batch.CopyFrom(result.batch)
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
        # The figures as fields too, for --json-output
        fields = {"method": method, "batch_size": size, "step_ms": round(seconds * 1e3, 2),
                  "forward_ms": round(result.forward_ns / 1e6, 2), "weights_gbs": round(bandwidth, 2)}
        log.log(level, "%s batch=%d step=%.1fms forward=%.1fms weights=%.1fGB/s", method, size, seconds * 1e3,
                result.forward_ns / 1e6, bandwidth, extra=fields)
