"""What --quantize costs in quality: perplexity on a fixed public-domain text, and greedy agreement with bf16.

    .venv/bin/python -m bench.perplexity --quantize none,int8,int4

Runs the shard engine in-process (as bench/engine_step.py does) on the embedded SmolLM2 unless
--model-dir is given. For each configuration:

- perplexity: exp of the mean negative log-likelihood of the tokens of bench/data/public_domain.txt
  (two book openings from before 1929), scored in windows of --window tokens (each window's first token
  is context only), through the engine's prompt logprobs; with --step-rows N the windows are fed N tokens
  a step (chunked prefill), so that N <= 4 scores every token through the kernels of decode steps (on a
  CPU with AVX512-VNNI the quantized ones multiply int8-quantized activations there, see
  shard/quantization.py) rather than through the prompt path's dequantized matmul;
- greedy agreement with the first configuration (bf16, unquantized, by default) over a few chat prompts:
  `forced` is the share of positions where the configuration's greedy token equals the reference's when
  both are given the reference's tokens so far (each position judged on its own); `free` is the share of
  tokens equal when each generates on its own (after a first difference the texts usually part). The
  reference is compared with itself too (forced from prompt steps against its own decode steps).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

TEXT = Path(__file__).with_name("data") / "public_domain.txt"
PROMPTS = [
    "What is the capital of France, and why is it famous?",
    "Write a short poem about the sea.",
    "Explain in two sentences how a refrigerator works.",
    "Give me three tips for learning a new language.",
]
CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def build(model_dir: Path, dtype: str, quantize: str | None, chunk_tokens: int = 4096,
          gguf_source: Path | None = None):
    from shard import cli
    from shard.distributed import Distributed
    from shard.kernels import cpu

    os.environ[cpu.DISABLE_ENV] = "1"
    cpu.load.cache_clear()
    args = argparse.Namespace(model_dir=model_dir, dtype=dtype, kv_cache_bytes=1 << 30, block_size=16,
                              trust_remote_code=False, prefill_chunk_tokens=chunk_tokens, prefix_caching=False,
                              quantize=quantize, gguf_source=gguf_source)
    return cli.build_engine(args, Distributed(rank=0, world_size=1, device=torch.device("cpu")))


def perplexity(engine, ids: list[int], window: int) -> tuple[float, int]:
    from shard.types import Request

    nll, count = 0.0, 0
    for i, start in enumerate(range(0, len(ids) - 1, window)):
        chunk = ids[start: start + window]
        if len(chunk) < 2:
            break
        result = engine.prefill(i + 1, [Request(id=i + 1, input_ids=chunk, max_new_tokens=1, prefill_logprobs=True,
                                                ignore_eos_token=True)], None)
        while not result.generations:  # chunked: the rest of the window, a chunk a step
            result = engine.decode([i + 1])
        (generation,) = result.generations
        logprobs = generation.prefill_tokens.logprobs[1:]
        assert len(logprobs) == len(chunk) - 1 and not any(math.isnan(v) for v in logprobs)
        nll -= sum(logprobs)
        count += len(logprobs)
        engine.clear(None)
    return math.exp(nll / count), count


def greedy(engine, prompt: list[int], steps: int) -> list[int]:
    from shard.types import Request

    result = engine.prefill(1, [Request(id=1, input_ids=prompt, max_new_tokens=steps, ignore_eos_token=True)], None)
    ids = [g.tokens.ids[0] for g in result.generations]
    batch = result.batch
    while batch is not None and len(ids) < steps:
        result = engine.decode([batch.id])
        ids += [g.tokens.ids[0] for g in result.generations]
        batch = result.batch
    engine.clear(None)
    return ids[:steps]


def forced_agreement(engine, prompt: list[int], reference: list[int]) -> int:
    """Positions where the greedy token after prompt + reference[:i] is reference[i]."""
    agree = 0
    for i in range(len(reference)):
        agree += greedy(engine, prompt + reference[:i], 1)[0] == reference[i]
    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the embedded SmolLM2 (converted)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantize", default="none,int8,int4,int4-gguf",
                        help="comma-separated; the first is the reference; int4-gguf: the embedded GGUF's own "
                             "Q4_1 blocks")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    parser.add_argument("--step-rows", type=int, default=0,
                        help="feed the perplexity windows this many tokens a step (0: a window a step)")
    args = parser.parse_args()
    if args.model_dir is None:
        from launcher.embedded import ensure_embedded_model
        from launcher.model_source import default_cache_dir

        args.model_dir = ensure_embedded_model(default_cache_dir()).path
    from tokenizers import Tokenizer

    from launcher.embedded import embedded_gguf_path

    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    text_ids = tokenizer.encode(TEXT.read_text()).ids
    prompts = [tokenizer.encode(CHATML.format(p)).ids for p in PROMPTS]
    print(f"{TEXT.name}: {len(text_ids)} tokens in windows of {args.window}"
          f"{f', {args.step_rows} a step' if args.step_rows else ''}; {len(PROMPTS)} prompts x "
          f"{args.tokens} greedy tokens; dtype {args.dtype}")
    print(f"{'quantize':8} {'MB':>7} {'perplexity':>10} {'vs first':>8} {'forced':>7} {'free':>7} {'s':>5}")
    reference: list[list[int]] | None = None
    base_ppl = None
    for name in args.quantize.split(","):
        # int4-gguf: the embedded GGUF's own Q4_1 blocks (shard/gguf_blocks.py) rather than quantized here
        quantize = None if name == "none" else name.removesuffix("-gguf")
        gguf = embedded_gguf_path() if name.endswith("-gguf") else None
        start = time.perf_counter()
        if args.step_rows:
            chunked = build(args.model_dir, args.dtype, quantize, args.step_rows, gguf)
            # a lone request's prompt is chunked only while others decode: here always
            chunked.scheduler.chunk_budget = lambda others_waiting: args.step_rows
            ppl, _ = perplexity(chunked, text_ids, args.window)
        engine = build(args.model_dir, args.dtype, quantize, gguf_source=gguf)
        if not args.step_rows:
            ppl, _ = perplexity(engine, text_ids, args.window)
        outputs = [greedy(engine, p, args.tokens) for p in prompts]
        if reference is None:
            reference, base_ppl = outputs, ppl
        # the reference against itself too: its forced tokens come from prompt steps (rows through torch's
        # matmul), its free ones from decode steps (the GEMV kernels), which may break near-ties apart
        total = sum(len(r) for r in reference)
        forced = sum(forced_agreement(engine, p, r) for p, r in zip(prompts, reference, strict=True)) / total
        free = sum(a == b for o, r in zip(outputs, reference, strict=True) for a, b in zip(o, r, strict=True)) / total
        print(f"{name:8} {engine.weight_bytes / 1e6:7.1f} {ppl:10.3f} {ppl / base_ppl - 1:+8.2%} {forced:7.1%} "
              f"{free:7.1%} {time.perf_counter() - start:5.0f}", flush=True)


if __name__ == "__main__":
    main()
