"""The shard engine without gRPC: continuous batching over the paged cache on a tiny random Llama."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from shard.cli import build_engine
from shard.distributed import Distributed
from shard.engine import Engine
from shard.types import CachedBatch, Request, StepResult
from tests.model_factory import build_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("engine-llama"), num_attention_heads=6, num_key_value_heads=2,
                       suppress_eos=True)


def new_engine(model_dir: Path, kv_cache_bytes: int = 4 << 20) -> Engine:
    args = argparse.Namespace(model_dir=model_dir, dtype="float32", kv_cache_bytes=kv_cache_bytes, block_size=16)
    engine = build_engine(args, Distributed(0, 1, torch.device("cpu")))
    engine.warmup(max_input_tokens=64, max_prefill_tokens=128)
    return engine


def req(rid: int, ids: list[int], max_new: int) -> Request:
    return Request(id=rid, input_ids=ids, max_new_tokens=max_new)


def solo(engine: Engine, rid: int, ids: list[int], max_new: int) -> list[int]:
    result = engine.prefill(1000 + rid, [req(rid, ids, max_new)], None)
    out = [g.tokens.ids[0] for g in result.generations]
    batch = result.batch
    while batch is not None:
        result = engine.decode([batch.id])
        out += [g.tokens.ids[0] for g in result.generations]
        batch = result.batch
    return out


A, B, C = [5, 6, 7, 8, 9], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57], [100, 3]


def test_requests_joining_mid_flight_get_the_same_tokens_as_alone(model_dir: Path) -> None:
    engine = new_engine(model_dir)
    expected = {1: solo(engine, 1, A, 12), 2: solo(engine, 2, B, 12), 3: solo(engine, 3, C, 12)}
    free_at_rest = engine.free_blocks
    got: dict[int, list[int]] = {1: [], 2: [], 3: []}

    def take(result: StepResult) -> CachedBatch | None:
        for g in result.generations:
            got[g.request_id].append(g.tokens.ids[0])
        return result.batch

    running = take(engine.prefill(1, [req(1, A, 12)], None))
    for _ in range(3):
        running = take(engine.decode([running.id]))
    # B is prefilled alone, then merged by the next Decode.
    new = take(engine.prefill(2, [req(2, B, 12)], None))
    running = take(engine.decode([running.id, new.id]))
    assert sorted(running.request_ids) == [1, 2]
    # C joins through Prefill's cached_batch: the running requests take their next step in the same
    # forward as C's prompt (one token each in the prefill's response), nothing is recomputed.
    before = {s.id: s.cached_length for s in engine.batches[running.id]}
    counts = {rid: len(ids) for rid, ids in got.items()}
    running = take(engine.prefill(3, [req(3, C, 12)], running.id))
    assert sorted(running.request_ids) == [1, 2, 3]
    assert {s.id: s.cached_length for s in engine.batches[running.id] if s.id != 3} == {
        rid: n + 1 for rid, n in before.items()}
    assert {rid: len(ids) - counts[rid] for rid, ids in got.items()} == {1: 1, 2: 1, 3: 1}
    while running is not None:
        running = take(engine.decode([running.id]))
    assert got == expected
    assert engine.free_blocks == free_at_rest


def test_filter_frees_the_cache_of_dropped_requests_at_once(model_dir: Path) -> None:
    engine = new_engine(model_dir)
    empty = engine.free_blocks
    result = engine.prefill(1, [req(1, A, 100), req(2, B, 100)], None)
    used_both = empty - engine.free_blocks
    assert used_both == 7 + 8  # ceil(105 / 16) + ceil(118 / 16) blocks reserved up front
    batch = engine.filter(result.batch.id, [2])
    assert list(batch.request_ids) == [2]
    assert engine.free_blocks == empty - 8
    assert engine.filter(batch.id, []) is None
    assert engine.free_blocks == empty


def test_finished_requests_leave_the_batch_in_the_same_step(model_dir: Path) -> None:
    engine = new_engine(model_dir)
    empty = engine.free_blocks
    result = engine.prefill(1, [req(1, A, 1), req(2, B, 3)], None)
    assert result.generations[0].generated_text is not None
    assert list(result.batch.request_ids) == [2]
    result = engine.decode([result.batch.id])
    result = engine.decode([result.batch.id])
    assert result.batch is None
    assert result.generations[0].generated_text.generated_tokens == 3
    assert engine.free_blocks == empty


def test_warmup_sizes_the_cache_from_the_memory_budget(model_dir: Path) -> None:
    engine = new_engine(model_dir, kv_cache_bytes=1 << 20)
    cfg = engine.runner.model.config
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    total = engine.warmup(max_input_tokens=64, max_prefill_tokens=128)
    assert total == (1 << 20) // (per_token * 16) * 16
    with pytest.raises(MemoryError):
        engine.warmup(max_input_tokens=64, max_prefill_tokens=total + 64)


def test_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding(model_dir: Path) -> None:
    engine = new_engine(model_dir, kv_cache_bytes=16 << 20)
    engine.warmup(max_input_tokens=400, max_prefill_tokens=400)
    long_prompt = [(7 * i) % 300 + 3 for i in range(300)]
    expected_long = solo(engine, 9, long_prompt, 6)
    expected_a = solo(engine, 8, A, 30)
    details = Request(id=10, input_ids=long_prompt, prefill_logprobs=True, max_new_tokens=1)
    whole = engine.prefill(50, [details], None).generations[0].prefill_tokens

    engine.scheduler.prefill_chunk_tokens = 64
    got: dict[int, list[int]] = {1: [], 2: [], 3: []}
    running = engine.prefill(1, [req(1, A, 30)], None)
    got[1] += [g.tokens.ids[0] for g in running.generations]
    joining = engine.prefill(2, [req(2, long_prompt, 6)], None)  # alone: whole prompt
    got[2] += [g.tokens.ids[0] for g in joining.generations]
    chunked = Request(id=3, input_ids=long_prompt, prefill_logprobs=True, max_new_tokens=6)
    # Joining a running batch: the new prompt is fed 64 tokens per step, the others decode meanwhile
    # (already in the prefill call, which steps the cached batch it is given).
    result = engine.prefill(3, [chunked], running.batch.id)
    assert [g.request_id for g in result.generations] == [1] and 3 in result.batch.request_ids
    got[1] += [g.tokens.ids[0] for g in result.generations]
    steps, prefill_tokens = 1, None
    batch = result.batch
    batches = [batch.id, joining.batch.id]
    while batches:
        result = engine.decode(batches)
        steps += 1 if not got[3] else 0
        ids = {g.request_id for g in result.generations}
        if not got[3] and 3 not in ids:
            assert 1 in ids  # the running request never waits for the prompt
        for g in result.generations:
            got[g.request_id].append(g.tokens.ids[0])
            if g.prefill_tokens is not None:
                prefill_tokens = g.prefill_tokens
        batches = [result.batch.id] if result.batch is not None else []
    assert steps == 5  # ceil(300 / 64) steps of one chunk each, the last one giving the first token
    assert got[1] == expected_a and got[2] == expected_long and got[3] == expected_long
    assert list(prefill_tokens.ids) == long_prompt
    assert prefill_tokens.logprobs[1:] == pytest.approx(list(whole.logprobs[1:]), abs=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_kernels_and_plain_torch_generate_the_same_tokens(model_dir: Path, dtype: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from shard.kernels import cpu

    def generate(kernels_on: bool) -> tuple[str, dict[int, list[int]]]:
        # "force": the kernels even where they are not the faster choice (a CPU without AVX-512)
        monkeypatch.setenv(cpu.DISABLE_ENV, "force" if kernels_on else "0")
        cpu.load.cache_clear()
        args = argparse.Namespace(model_dir=model_dir, dtype=dtype, kv_cache_bytes=4 << 20, block_size=16)
        engine = build_engine(args, Distributed(0, 1, torch.device("cpu")))
        engine.warmup(max_input_tokens=64, max_prefill_tokens=128)
        ops = type(engine.runner.model.ops).__name__  # type: ignore[attr-defined]
        # three requests decoding together: batched decode attention over different context lengths
        result = engine.prefill(1, [req(1, A, 10), req(2, B, 10), req(3, C, 10)], None)
        got: dict[int, list[int]] = {1: [], 2: [], 3: []}
        while True:
            for g in result.generations:
                got[g.request_id].append(g.tokens.ids[0])
            if result.batch is None:
                return ops, got
            result = engine.decode([result.batch.id])

    try:
        torch_ops, torch_ids = generate(False)
        kernel_ops, kernel_ids = generate(True)
    finally:
        cpu.load.cache_clear()
    assert (torch_ops, kernel_ops) == ("TorchOps", "KernelOps")
    if dtype == "float32":
        assert kernel_ids == torch_ids
    else:
        # bf16 rounds differently in the two (accumulation order, where probabilities are rounded): a
        # random model's near-ties may then go either way after a few tokens; the kernel tests bound
        # the numeric difference of each operation.
        assert {rid: ids[:3] for rid, ids in kernel_ids.items()} == {rid: ids[:3] for rid, ids in torch_ids.items()}
