"""Entry point of one shard rank: load the model slice, serve gRPC on `<uds-path>-<rank>`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import torch

from common.logs import setup_logging
from common.quantization import UnsupportedQuantization, resolve_quantize
from common.sockets import shard_socket_path
from shard.cpu_budget import cpu_budget
from shard.detokenize import special_token_ids
from shard.distributed import Distributed
from shard.engine import Engine
from shard.gguf_blocks import FIRST_MATRIX, open_gguf_blocks
from shard.model_runner import ModelRunner, PagedRunner
from shard.models.auto import TransformersRunner
from shard.models.config import LLAMA_FAMILY, ModelConfig, architecture_of, vocab_size_of
from shard.models.llama import LlamaModel
from shard.server import TextGenerationService
from shard.stopping import eos_token_ids_for
from shard.weights import Weights
from tgi_proto import generate_pb2 as pb
from tgi_proto import generate_pb2_grpc as pb_grpc

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger("shard")


def _thread_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _on_off(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (as the launcher's PREFIX_CACHING takes them)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tgi-py shard: one tensor-parallel rank")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model-id", default=None)
    parser.add_argument("--uds-path", default="/tmp/text-generation-server")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--kv-cache-bytes", type=int, default=2 << 30)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--json-output", action="store_true", help="Log JSON lines instead of text.")
    parser.add_argument("--prefill-chunk-tokens", type=int, default=int(os.environ.get("PREFILL_CHUNK_TOKENS", 256)),
                        help="prompt tokens fed per step while other requests decode (chunked prefill)")
    parser.add_argument("--prefix-caching", type=_on_off, default=None,
                        help="reuse the KV blocks of prompt prefixes computed before (true/false; default: "
                             "PREFIX_CACHING, else true)")
    parser.add_argument("--speculate", type=_non_negative, default=int(os.environ.get("SPECULATE", 0)),
                        help="n-gram speculation: up to N draft tokens per decoding request and step (0: off)")
    parser.add_argument("--quantize", default=os.environ.get("QUANTIZE") or None,
                        help="weight-only quantization at load: int8 (or eetq), int4 (default: QUANTIZE, else none)")
    parser.add_argument("--gguf-source", type=Path, default=os.environ.get("GGUF_SOURCE") or None,
                        help="the GGUF the model directory was converted from: with --quantize int4 its Q4_1 "
                             "matrices are used as they are (default: GGUF_SOURCE; the launcher sets it for "
                             "the embedded model)")
    parser.add_argument("--threads", type=_thread_count, default=None,
                        help="CPU threads (beats OMP_NUM_THREADS; default: the CPUs this process may use, "
                             "from its affinity mask and cgroup quota, divided among the node's shards)")
    args = parser.parse_args(argv)
    try:
        args.quantize = resolve_quantize(args.quantize)
    except UnsupportedQuantization as exc:
        parser.error(str(exc))
    if args.prefix_caching is None:
        try:
            args.prefix_caching = _on_off(os.environ.get("PREFIX_CACHING", "true"))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"PREFIX_CACHING: {exc}")
    return args


def build_engine(args: argparse.Namespace, dist: Distributed) -> Engine:
    from tokenizers import Tokenizer

    architecture = architecture_of(args.model_dir)
    runner: ModelRunner
    quantize = getattr(args, "quantize", None)
    if quantize is not None and architecture not in LLAMA_FAMILY:
        raise SystemExit(f"--quantize {quantize}: architecture {architecture!r} is served by the generic "
                         f"transformers path, which has no quantized weights (the Llama family has)")
    if architecture in LLAMA_FAMILY:
        weights = Weights(args.model_dir, DTYPES[args.dtype], dist.device, quantize)
        config = ModelConfig.load(args.model_dir)
        gguf_source = getattr(args, "gguf_source", None)
        if quantize == "int4" and gguf_source is not None:
            blocks = open_gguf_blocks(gguf_source, config.num_heads, config.num_kv_heads)
            if blocks is not None and not (weights.has(FIRST_MATRIX) and blocks.matches(weights.peek(FIRST_MATRIX))):
                log.warning("--gguf-source %s does not hold this checkpoint's weights: int4 weights are "
                            "quantized from the checkpoint", gguf_source)
                blocks = None
            weights.gguf_blocks = blocks
        model = LlamaModel(config, weights, dist)
        if weights.gguf_blocks is not None:
            log.info("int4: %d matrices taken as they are from %s's Q4_1 blocks, the rest quantized here",
                     weights.gguf_blocks.matrices_used, gguf_source)
        runner = PagedRunner(model, dist, args.kv_cache_bytes, args.block_size,
                             getattr(args, "prefix_caching", True))
        weight_bytes = weights.bytes_loaded
    elif dist.world_size > 1:
        raise SystemExit(
            f"architecture {architecture!r} has no tensor-parallel model code: it can only be served "
            f"with --num-shard 1 (tensor parallelism covers Llama, Mistral, Qwen2 and SmolLM2)"
        )
    else:
        runner = TransformersRunner(args.model_dir, DTYPES[args.dtype], args.kv_cache_bytes, args.trust_remote_code)
        weight_bytes = runner.weight_bytes
        log.warning("%s is served by the generic transformers path: correct, one request per forward",
                    architecture)
        if getattr(args, "prefix_caching", True):
            log.warning("prefix caching is off for %s: the generic transformers path keeps one cache per "
                        "request and cannot share blocks", architecture)
    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    engine = Engine(runner, tokenizer, eos_token_ids_for(args.model_dir, tokenizer), special_token_ids(tokenizer),
                    getattr(args, "prefill_chunk_tokens", 256), vocab_size_of(args.model_dir),
                    speculate=getattr(args, "speculate", 0))
    engine.weight_bytes = weight_bytes
    log.info("rank %d/%d loaded %s: %.1f MB of weights (%s), prefix caching %s", dist.rank, dist.world_size,
             architecture, weight_bytes / 1e6, args.dtype + (f", {quantize} weights" if quantize else ""),
             "on" if runner.prefix_caching else "off")
    return engine


async def serve(args: argparse.Namespace) -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    # One GPU per rank when there are GPUs (NCCL between them); otherwise the CPU with gloo.
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if torch.cuda.is_available() \
        else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = Distributed.from_env(device)
    budget = cpu_budget(dist.world_size, getattr(args, "threads", None))
    threads = budget.threads
    log.info("rank %d: %d thread%s (%s)", dist.rank, threads, "" if threads == 1 else "s", budget.reason)
    # All torch work happens on this one thread, loading included. OpenMP keeps a thread team per
    # calling thread; with a second team alive (the main thread's) libgomp counts more threads than
    # CPUs and stops spinning between parallel regions, and every region then pays a futex wake-up:
    # measured 32 ms instead of 24 per SmolLM2 decode step on 2 cores. The thread count is set here
    # too, because OpenMP's is per thread.
    engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    def start_engine() -> Engine:
        torch.set_num_threads(threads)
        return build_engine(args, dist)

    engine = await asyncio.get_running_loop().run_in_executor(engine_thread, start_engine)
    socket_path = shard_socket_path(args.uds_path, dist.rank)
    # Ranks on node 0 (the router's) answer on their unix socket; ranks on other nodes also listen on
    # TCP and tell rank 0 where, so that ServiceDiscovery lists every rank the router must call.
    tcp_port = os.environ.get("SHARD_PORT")
    remote = tcp_port is not None and os.environ.get("NODE_RANK", "0") != "0"
    if remote:
        host = os.environ.get("SHARD_ADVERTISE_HOST") or socket.gethostbyname(socket.gethostname())
        own_url = f"{host}:{tcp_port}"
    else:
        own_url = f"unix://{socket_path}"
    urls = dist.all_gather_strings(own_url)
    info = pb.InfoResponse(
        requires_padding=False, dtype=args.dtype, device_type=dist.device.type, speculate=engine.speculate,
        support_chunking=engine.runner.supports_chunking, use_prefix_caching=engine.runner.prefix_caching,
        attention_impl=engine.runner.attention_impl,
        block_size=engine.runner.block_size, model_id=args.model_id or str(args.model_dir),
        world_size=dist.world_size, max_position_embeddings=engine.runner.max_position_embeddings,
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
    service = TextGenerationService(engine, info, urls, engine_thread)
    pb_grpc.add_TextGenerationServiceServicer_to_server(service, server)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    old_umask = os.umask(0o077)  # the socket is the owner's alone
    try:
        server.add_insecure_port(f"unix://{socket_path}")
        if remote:
            server.add_insecure_port(f"0.0.0.0:{tcp_port}")
        await server.start()
    finally:
        os.umask(old_umask)
    log.info("rank %d serving on unix://%s", dist.rank, socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    log.info("rank %d stopped", dist.rank)
    logging.shutdown()
    # The engine thread may be blocked in a collective with a rank that died; don't wait to join it.
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The router's formats (common/logs.py, shared by every process): one log stream.
    setup_logging(args.json_output, os.environ.get("LOG_LEVEL", "INFO"))
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
