"""N-gram speculation in-process (no gRPC, no router): acceptance and decode speed with and without it.

    .venv/bin/python -m bench.speculation --speculate 0,3,5 --prompt-set grounded,generic --batch 1,16

Runs the shard engine on the embedded model (or --model-dir) over tgi-bench's prompt sets in the chatml
template, greedy, `--output-tokens` each, and prints per configuration: generated tokens per decode step,
the drafts' acceptance rate, and decode tokens/s (the prefill is not timed). Configurations alternate
round by round (--rounds) so that this machine's drifting memory bandwidth spreads over all of them. Its
greedy outputs are compared with the first configuration's: speculation must not change a token.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.apis import CHATML
from bench.prompts import PROMPT_SETS, make_prompt_set


def build(model_dir: Path, dtype: str, speculate: int, quantize: str | None = None):
    from shard import cli
    from shard.distributed import Distributed

    args = argparse.Namespace(model_dir=model_dir, dtype=dtype, kv_cache_bytes=1 << 30, block_size=16,
                              trust_remote_code=False, prefill_chunk_tokens=256, speculate=speculate,
                              quantize=quantize)
    engine = cli.build_engine(args, Distributed(rank=0, world_size=1, device=torch.device("cpu")))
    engine.warmup(max_input_tokens=1024, max_prefill_tokens=1024)
    return engine


def run(engine, prompts: list[list[int]], output_tokens: int) -> tuple[float, int, int, int, int, list[list[int]]]:
    """(decode seconds, decode steps, tokens generated, drafted, accepted, ids per prompt) for one batch."""
    from shard.types import Request

    engine.clear(None)
    requests = [Request(id=i, input_ids=ids, max_new_tokens=output_tokens) for i, ids in enumerate(prompts)]
    out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    result = engine.prefill(1, requests, None)
    for g in result.generations:
        out[g.request_id] += g.tokens.ids
    before = (engine.drafter.totals.drafted, engine.drafter.totals.accepted)
    steps = 0
    start = time.perf_counter()
    batch = result.batch
    while batch is not None:
        result = engine.decode([batch.id])
        steps += 1
        for g in result.generations:
            out[g.request_id] += g.tokens.ids
        batch = result.batch
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) - 1 for ids in out.values())  # the first came from the prefill
    return (seconds, steps, tokens, engine.drafter.totals.drafted - before[0],
            engine.drafter.totals.accepted - before[1], [out[i] for i in range(len(prompts))])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--speculate", default="0,4", help="comma-separated N values (0: off)")
    parser.add_argument("--quantize", default=None, help="weight-only int8 or int4 (default: none)")
    parser.add_argument("--prompt-set", default="grounded", help=f"comma-separated, of {', '.join(PROMPT_SETS)}")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=4, help="batches per configuration and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--min-gain", type=float, default=None,
                        help="override the drafter's MIN_GAIN (shard/speculation.py), for tuning")
    args = parser.parse_args(argv)
    if args.model_dir is None:
        from launcher.model_source import resolve_model

        args.model_dir = resolve_model(None, None).path
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    speculates = [int(v) for v in args.speculate.split(",")]
    batches = [int(v) for v in args.batch.split(",")]
    engines = {n: build(args.model_dir, args.dtype, n, args.quantize) for n in speculates}
    if args.min_gain is not None:
        for engine in engines.values():
            engine.drafter.min_gain = args.min_gain
    warm = tokenizer.encode(CHATML.format(prompt="Say hello, then count from one to twenty.")).ids
    for engine in engines.values():  # untimed: the thread governor's first trials, the first allocations
        run(engine, [warm] * max(batches), 32)
    results: dict[tuple, list[tuple]] = {}
    reference: dict[tuple, list[list[int]]] = {}
    for _ in range(args.rounds):
        for prompt_set in args.prompt_set.split(","):
            for batch in batches:
                texts = [p.text for p in make_prompt_set(prompt_set, args.prompts * batch, args.prompt_tokens)]
                ids = [tokenizer.encode(CHATML.format(prompt=t)).ids for t in texts]
                groups = [ids[i * batch: (i + 1) * batch] for i in range(args.prompts)]
                for n in speculates:
                    for g, group in enumerate(groups):
                        r = run(engines[n], group, args.output_tokens)
                        results.setdefault((prompt_set, batch, n), []).append(r[:5])
                        ref = reference.setdefault((prompt_set, batch, g), r[5])
                        if r[5] != ref:
                            print(f"MISMATCH {prompt_set} batch={batch} speculate={n} group={g}")
    print(f"{'prompts':9} {'batch':>5} {'N':>3} {'tok/step':>8} {'accept':>7} {'tok/s':>8} {'vs N=0':>7}")
    for (prompt_set, batch, n), rows in results.items():
        seconds = sum(r[0] for r in rows)
        steps, tokens = sum(r[1] for r in rows), sum(r[2] for r in rows)
        drafted, accepted = sum(r[3] for r in rows), sum(r[4] for r in rows)
        base = results.get((prompt_set, batch, 0))
        rate = tokens / seconds
        ratio = rate / (sum(r[2] for r in base) / sum(r[0] for r in base)) if base else float("nan")
        per_round = [r[2] / r[0] for r in rows]
        print(f"{prompt_set:9} {batch:5d} {n:3d} {tokens / steps / batch:8.2f} "
              f"{accepted / drafted if drafted else 0:7.1%} {rate:8.1f} {ratio:7.2f}x  "
              f"(per batch: {statistics.median(per_round):.1f} median)")


if __name__ == "__main__":
    main()
