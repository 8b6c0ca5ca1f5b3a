"""Decode steps of the shard engine in-process (no gRPC, no router): ms per step, tokens/s, weight GB/s.

    .venv/bin/python -m bench.engine_step --batch 1,4,16,32 --dtype float32,bfloat16 --quantize none,int8,int4

Each configuration prefills `batch` prompts of `--prompt-tokens` tokens, then times `--steps` decode
steps of the whole batch through Engine.decode (forward, sampling, detokenization: everything the
shard does per step but gRPC). `--paths` picks the code paths to run side by side: `fused` (the
default: the CPU kernels, a one-rank step's layers in one C call, shard/models/layers_in_one_call.py),
`layers` (the same kernels called layer by layer from Python) and `torch` (kernels off,
TGI_PY_CPU_KERNELS=0). `--quantize` adds weight-only int8 / int4 (shard/quantization.py). Prints one
line per configuration with the memory read bandwidth read just before it, so that batch-1 results read
as a fraction of what the machine gave at that moment (it moves by half within minutes here). `weight
GB/s` is the bytes a decode step streams (every layer's matrices and norms and the LM head: the weight
arena, quantized or not) over the step's time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from bench.membw import read_bandwidth_gbs

PATHS = ("fused", "layers", "torch")


def build(model_dir: Path, dtype: str, path: str, quantize: str | None = None):
    from shard import cli
    from shard.distributed import Distributed
    from shard.kernels import cpu

    os.environ[cpu.DISABLE_ENV] = "0" if path == "torch" else "1"
    cpu.load.cache_clear()
    args = argparse.Namespace(model_dir=model_dir, dtype=dtype, kv_cache_bytes=1 << 30, block_size=16,
                              trust_remote_code=False, prefill_chunk_tokens=256, quantize=quantize)
    engine = cli.build_engine(args, Distributed(rank=0, world_size=1, device=torch.device("cpu")))
    if path == "layers":
        engine.runner.model.one_call_layers = None
    elif path == "fused" and engine.runner.model.one_call_layers is None:
        raise SystemExit(f"no fused decode path for {dtype} on this machine")
    return engine


def measure(engine, batch: int, prompt_tokens: int, steps: int) -> list[float]:
    from shard.types import Request

    engine.clear(None)
    requests = [
        Request(id=i, input_ids=[(17 * i + 31 * t) % 1000 + 100 for t in range(prompt_tokens)],
                max_new_tokens=steps + 2, ignore_eos_token=True)
        for i in range(batch)
    ]
    result = engine.prefill(1, requests, None)
    cached = result.batch
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        cached = engine.decode([cached.id]).batch
        times.append(time.perf_counter() - start)
    engine.clear(None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the embedded SmolLM2 (converted)")
    parser.add_argument("--batch", default="1,4,16,32")
    parser.add_argument("--dtype", default="float32,bfloat16")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--paths", default="fused", help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--quantize", default="none", help="comma-separated, of none, int8, int4")
    parser.add_argument("--membw-mb", type=int, default=1024, help="size of the bandwidth probe (MiB)")
    args = parser.parse_args()
    if args.model_dir is None:
        from launcher.embedded import ensure_embedded_model
        from launcher.model_source import default_cache_dir

        args.model_dir = ensure_embedded_model(default_cache_dir()).path
    gbs = read_bandwidth_gbs(args.membw_mb)
    print(f"memory read bandwidth: {gbs:.1f} GB/s (torch.sum over {args.membw_mb} MiB, "
          f"{torch.get_num_threads()} threads); each line's own reading is taken just before it")
    print(f"{'dtype':9} {'quant':5} {'path':8} {'batch':>5} {'ms/step p50':>11} {'tok/s':>7} {'step MB':>7} "
          f"{'weight GB/s':>11} {'membw GB/s':>10} {'of membw':>8}")
    for dtype in args.dtype.split(","):
        for quantize, path in ((q, p) for q in args.quantize.split(",") for p in args.paths.split(",")):
            engine = build(args.model_dir, dtype, path, None if quantize == "none" else quantize)
            arena = engine.runner.model.weight_arena
            step_bytes = arena.numel() if arena is not None else engine.weight_bytes
            for batch in (int(b) for b in args.batch.split(",")):
                measure(engine, batch, args.prompt_tokens, 4)  # warm the allocator and the caches
                # This machine's bandwidth moves by half within minutes: the share is against a reading
                # taken seconds before the steps it is compared with.
                gbs = read_bandwidth_gbs(args.membw_mb)
                p50 = statistics.median(measure(engine, batch, args.prompt_tokens, args.steps))
                weight_gbs = step_bytes / p50 / 1e9
                print(f"{dtype:9} {quantize:5} {path:8} {batch:5d} {p50 * 1e3:11.1f} {batch / p50:7.1f} "
                      f"{step_bytes / 1e6:7.3f} {weight_gbs:11.3f} {gbs:10.1f} {weight_gbs / gbs:8.0%}", flush=True)


if __name__ == "__main__":
    main()
