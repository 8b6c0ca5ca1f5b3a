"""Router entry point: connect to the shards, warm them up, then serve HTTP."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from aiohttp import web

from common.arith import ceil_div
from common.logs import setup_logging
from router.batcher import Batcher, SchedulerConfig
from router.chat_template import ChatTemplate
from router.config import RouterConfig
from router.openai_routes import OpenAIRoutes
from router.openapi import build_openapi
from router.openapi_docs import add_openapi_routes
from router.server import VERSION, Router
from router.shard_client import ShardClient
from router.token_bytes import TokenBytes
from router.tracing import Tracing
from router.validation import ValidationLimits, Validator, load_tokenizer

log = logging.getLogger("router")


async def start(config: RouterConfig) -> None:
    tokenizer = load_tokenizer(config.tokenizer_dir)
    client = await ShardClient.connect(config.shard_uds_path)
    info = await client.info()
    log.info("connected to %d shard(s): %s on %s, block size %d", client.world_size, info.dtype,
             info.device_type, info.block_size)
    needed = ceil_div(config.max_total_tokens, info.block_size) * info.block_size
    # Admission caps concurrency, so a pool larger than every admitted request at full length is waste.
    useful = config.max_batch_total_tokens or needed * config.max_concurrent_requests
    supported = await client.warmup(config.max_input_tokens, config.max_batch_prefill_tokens,
                                    config.max_total_tokens, useful)
    max_batch_total = min(supported, config.max_batch_total_tokens or supported)
    if max_batch_total < needed:
        raise SystemExit(
            f"the KV cache holds {max_batch_total} tokens, less than one request of --max-total-tokens "
            f"{config.max_total_tokens} needs ({needed}): raise --kv-cache-bytes or lower --max-total-tokens"
        )
    log.info("max batch total tokens: %d", max_batch_total)
    batcher = Batcher(client, SchedulerConfig(
        max_batch_prefill_tokens=config.max_batch_prefill_tokens, max_batch_total_tokens=max_batch_total,
        block_size=info.block_size, waiting_served_ratio=config.waiting_served_ratio,
        max_waiting_tokens=config.max_waiting_tokens, max_batch_size=config.max_batch_size,
        prefill_joins_decode=info.support_chunking,
    ))
    validator = Validator(tokenizer, ValidationLimits(
        max_input_tokens=config.max_input_tokens, max_total_tokens=config.max_total_tokens,
        max_stop_sequences=config.max_stop_sequences, max_top_n_tokens=config.max_top_n_tokens,
        max_best_of=config.max_best_of,
    ))
    tracing = Tracing(config.otlp_endpoint, config.otlp_service_name)
    router = Router(config, validator, batcher, client, max_batch_total, tracing=tracing)
    app = router.app()
    OpenAIRoutes(router, ChatTemplate.load(config.tokenizer_dir), TokenBytes(tokenizer)).add_to(app)
    add_openapi_routes(app, build_openapi(VERSION, config.model_id))
    loop_task = asyncio.create_task(batcher.run(), name="batcher")
    router.batcher_task = loop_task
    # A client that disconnects cancels its handler, which takes its request out of the batch.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           keepalive_timeout=config.keep_alive_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.hostname, config.port)
    await site.start()
    # What start-up built (tokenizer, chat template, OpenAPI document, metrics) lives as long as the
    # process: frozen out of the collector's view, a full collection no longer walks it between two
    # tokens of a stream (measured: 35 ms pauses at 32 streams).
    gc.collect()
    gc.freeze()
    router.ready = True
    log.info("router listening on http://%s:%d", config.hostname, config.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    done, _ = await asyncio.wait([asyncio.create_task(stop.wait()), loop_task],
                                 return_when=asyncio.FIRST_COMPLETED)
    if loop_task in done:
        log.error("batcher stopped: %r", loop_task.exception())
        await runner.cleanup()
        await asyncio.to_thread(tracing.shutdown)
        sys.exit(1)
    await drain(router, config.graceful_termination_timeout)
    loop_task.cancel()
    await runner.cleanup()
    await asyncio.to_thread(tracing.shutdown)  # flush the last spans (bounded by EXPORT_TIMEOUT_S)
    await client.close()


async def drain(router: Router, timeout: float) -> None:
    """Stop admitting (503), let in-flight requests finish, then end what is left with an error event."""
    router.draining = True
    in_flight = router.admission.in_flight
    log.info("draining: %d request(s) in flight, waiting up to %.0f s", in_flight, timeout)
    deadline = asyncio.get_running_loop().time() + timeout
    while router.admission.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    if router.admission.in_flight:
        ended = router.batcher.abort_all("The server shut down before this request finished", "unavailable")
        log.warning("drain timeout: ended %d request(s)", ended)
        # Let the handlers write their error events before the connections close.
        for _ in range(100):
            if not router.admission.in_flight:
                break
            await asyncio.sleep(0.02)
    log.info("drained")


def main(argv: list[str] | None = None) -> None:
    config = RouterConfig.parse(argv)
    setup_logging(config.json_output, os.environ.get("LOG_LEVEL", "INFO"))
    asyncio.run(start(config))


if __name__ == "__main__":
    main()
