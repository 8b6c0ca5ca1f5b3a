"""Prefix caching in the engine: the same greedy ids with the cache on and off, whatever is reused."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shard.cli import build_engine
from shard.distributed import Distributed
from shard.engine import Engine
from shard.types import Request, StepResult
from tests.model_factory import build_llama

BLOCK = 16
BLOCK_BYTES = 2 * 2 * 2 * 8 * 4 * BLOCK  # K and V, 2 layers, 2 KV heads of 8, float32, 16 tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("prefix-llama"), num_attention_heads=6, num_key_value_heads=2,
                       suppress_eos=True)


def new_engine(model_dir: Path, prefix_caching: bool, kv_cache_bytes: int = 4 << 20) -> Engine:
    args = argparse.Namespace(model_dir=model_dir, dtype="float32", kv_cache_bytes=kv_cache_bytes,
                              block_size=BLOCK, prefix_caching=prefix_caching)
    engine = build_engine(args, Distributed(0, 1, torch.device("cpu")))
    engine.warmup(max_input_tokens=64, max_prefill_tokens=128)
    assert engine.runner.prefix_caching is prefix_caching
    return engine


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 390) for _ in range(n)]


class Driver:
    """Continuous batching as the router does it: one running batch, new requests join it through
    Prefill's cached batch, every response's tokens collected per request."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ids: dict[int, list[int]] = {}
        self.cached: dict[int, int] = {}  # request id -> cached_prompt_tokens of its first generation
        self.prefill_logprobs: dict[int, list[float]] = {}
        self.texts: dict[int, list[str]] = {}
        self.batch: int | None = None
        self._next_batch = 1

    def _take(self, result: StepResult) -> None:
        for g in result.generations:
            if g.request_id not in self.ids:
                self.cached[g.request_id] = g.cached_prompt_tokens
            else:
                assert g.cached_prompt_tokens == 0  # reported with the first token only
            self.ids.setdefault(g.request_id, []).append(g.tokens.ids[0])
            self.texts.setdefault(g.request_id, []).append(g.tokens.texts[0])
            if g.prefill_tokens is not None:
                self.prefill_logprobs[g.request_id] = list(g.prefill_tokens.logprobs[1:])
        self.batch = result.batch.id if result.batch is not None else None

    def join(self, *requests: Request) -> None:
        self._next_batch += 1
        self._take(self.engine.prefill(self._next_batch, list(requests), self.batch))

    def step(self, steps: int = 1) -> None:
        for _ in range(steps):
            if self.batch is not None:
                self._take(self.engine.decode([self.batch]))

    def drain(self) -> None:
        while self.batch is not None:
            self.step()


def req(rid: int, ids: list[int], max_new: int, **kwargs: object) -> Request:
    return Request(id=rid, input_ids=ids, max_new_tokens=max_new, **kwargs)  # type: ignore[arg-type]


def both(model_dir: Path, scenario: Callable[[Driver], Driver], **engine_kwargs: int) -> tuple[Driver, Driver]:
    """The scenario on an engine with the cache and on one without; the cached one's ids must match."""
    off = scenario(Driver(new_engine(model_dir, False, **engine_kwargs)))
    on = scenario(Driver(new_engine(model_dir, True, **engine_kwargs)))
    assert on.ids == off.ids
    assert set(off.cached.values()) == {0}
    blocks = on.engine.runner.blocks
    assert blocks.free_blocks == blocks.num_blocks  # everything back at rest, cached or free
    return on, off


def test_multi_turn_conversation_reuses_the_history(model_dir: Path) -> None:
    system = tokens(1, 40)

    def conversation(d: Driver) -> Driver:
        prompt = system + tokens(100, 5)
        for turn in range(4):
            d.join(req(turn, prompt, 10))
            d.drain()
            prompt = prompt + d.ids[turn] + tokens(101 + turn, 5)
        return d

    on, _ = both(model_dir, conversation)
    assert on.cached[0] == 0
    # Turn k reuses every full block of turn k-1's prompt and answer (its last token was never fed).
    lengths = [45 + 15 * k for k in range(4)]
    assert [on.cached[k] for k in range(1, 4)] == [(n + 9) // BLOCK * BLOCK for n in lengths[:3]]


def test_prompts_sharing_a_prefix_in_one_batch_and_joining_it(model_dir: Path) -> None:
    prefix = tokens(2, 48)

    def scenario(d: Driver) -> Driver:
        d.join(req(1, prefix + [5, 6], 8), req(2, prefix + [7], 8), req(3, prefix + [5, 6], 8))
        d.step(2)
        # Joining while 1-3 run: their blocks are shared read-only with the newcomers.
        d.join(req(4, prefix + [9, 9, 9], 8), req(5, prefix + [5, 6], 8), req(6, prefix[:20], 8))
        d.drain()
        return d

    on, _ = both(model_dir, scenario)
    assert [on.cached[i] for i in range(1, 7)] == [0, 0, 0, 48, 48, 16]


def test_a_strict_prefix_and_an_identical_prompt(model_dir: Path) -> None:
    prompt = tokens(3, 48)

    def scenario(d: Driver) -> Driver:
        for rid, ids in enumerate([prompt, prompt[:40], prompt, prompt[:16], prompt[:17], prompt + [4]]):
            d.join(req(rid, ids, 6))
            d.drain()
        return d

    on, _ = both(model_dir, scenario)
    assert [on.cached[i] for i in range(6)] == [0, 32, 32, 0, 16, 48]


def test_eviction_while_requests_run_with_the_cache_nearly_full(model_dir: Path) -> None:
    prefixes = [tokens(10 + i, 40) for i in range(6)]
    # Reversed the second time: the most recently cached prefixes hit, the oldest were evicted.
    order = [(0, i) for i in range(6)] + [(1, i) for i in reversed(range(6))]

    def scenario(d: Driver) -> Driver:
        for rid, (turn, i) in enumerate(order):
            d.join(req(rid, prefixes[i] + [turn + 3, i + 3], 8))  # 4 blocks each, about 3 running at once
            d.step(3)
        d.drain()
        return d

    on, _ = both(model_dir, scenario, kv_cache_bytes=20 * BLOCK_BYTES)
    second_round = [on.cached[rid] for rid in range(6, 12)]
    assert second_round[0] == 32 and 0 in second_round, second_round
    assert on.engine.runner.blocks.cached_blocks <= 20


def test_prompt_logprobs_are_computed_whole_and_their_blocks_cached(model_dir: Path) -> None:
    prompt = tokens(4, 40)

    def scenario(d: Driver) -> Driver:
        d.join(req(1, prompt, 4))
        d.drain()
        d.join(req(2, prompt + [7] * 10, 4, prefill_logprobs=True))  # fills and caches a third block
        d.drain()
        d.join(req(3, prompt + [7] * 10 + [9], 4))
        d.drain()
        return d

    on, off = both(model_dir, scenario)
    assert [on.cached[i] for i in (1, 2, 3)] == [0, 0, 48]
    assert len(on.prefill_logprobs[2]) == 49
    assert on.prefill_logprobs[2] == pytest.approx(off.prefill_logprobs[2], abs=1e-5)


def test_a_prompt_filtered_out_mid_prefill_leaves_only_its_computed_blocks(model_dir: Path) -> None:
    long_prompt = tokens(5, 100)

    def scenario(d: Driver) -> Driver:
        d.engine.scheduler.prefill_chunk_tokens = 24
        d.join(req(1, tokens(6, 5), 30))
        d.join(req(2, long_prompt, 4))  # joins the running batch: 24 prompt tokens per step
        d.step()  # 48 of its tokens computed: blocks 0-2 full, block 3 half
        assert d.batch is not None and 2 not in d.ids
        kept = d.engine.filter(d.batch, [1])  # cancelled mid-prefill
        assert kept is not None and list(kept.request_ids) == [1]
        d.step()
        # Joining while 1 decodes: the 52 tokens left after the cached 48 go in 3 chunks, the first
        # token comes with the second Decode after the join.
        d.join(req(3, long_prompt, 4))
        d.step()
        assert 3 not in d.ids
        d.step()
        assert (3 in d.ids) is d.engine.runner.prefix_caching  # without the cache: 5 chunks
        d.drain()
        return d

    on, _ = both(model_dir, scenario)
    assert on.cached[3] == 48


def test_a_stop_sequence_ends_a_request_whose_blocks_are_reused(model_dir: Path) -> None:
    prompt = tokens(7, 30)
    reference = Driver(new_engine(model_dir, False))
    reference.join(req(1, prompt, 12))
    reference.drain()
    stop = next(t for t in reference.texts[1][4:] if t.strip())

    def scenario(d: Driver) -> Driver:
        d.join(req(1, prompt, 12, stop_sequences=(stop,)))
        d.drain()
        d.join(req(2, prompt + d.ids[1] + [3, 4], 6))
        d.drain()
        return d

    on, _ = both(model_dir, scenario)
    assert len(on.ids[1]) < 12 and on.cached[2] == (30 + len(on.ids[1]) - 1) // BLOCK * BLOCK


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ([], None, True), (["--prefix-caching", "false"], None, False), (["--prefix-caching", "1"], "0", True),
    ([], "0", False), ([], "true", True), (["--prefix-caching", "off"], None, False),
])
def test_the_shard_flag_and_its_environment_variable(argv: list[str], env: str | None, expected: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from shard.cli import parse_args

    if env is None:
        monkeypatch.delenv("PREFIX_CACHING", raising=False)
    else:
        monkeypatch.setenv("PREFIX_CACHING", env)
    assert parse_args(["--model-dir", "m", *argv]).prefix_caching is expected
    with pytest.raises(SystemExit):
        parse_args(["--model-dir", "m", "--prefix-caching", "maybe"])
