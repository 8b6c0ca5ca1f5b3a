"""The KV block allocator on its own: whole requests in, block tables out, counts back to free; the prefix
cache (shared full blocks, their chained keys, LRU eviction)."""

from __future__ import annotations

import random

import pytest

from shard.block_manager import BlockManager, OutOfBlocks, block_key, chain_hashes


def test_a_request_gets_every_block_it_can_need_up_front() -> None:
    blocks = BlockManager(num_blocks=10, block_size=16)
    allocation = blocks.allocate(list(range(20)), total_tokens=33)  # 20 prompt + 13 new: 3 blocks
    assert allocation.blocks == [0, 1, 2] and allocation.cached_tokens == 0
    assert blocks.free_blocks == 7
    assert blocks.blocks_for(32) == 2 and blocks.blocks_for(33) == 3
    assert blocks.can_allocate(16 * 7) and not blocks.can_allocate(16 * 7 + 1)


def test_freed_blocks_are_handed_out_again_first_block_first() -> None:
    blocks = BlockManager(num_blocks=6, block_size=4)
    first = blocks.allocate([1], 12).blocks
    second = blocks.allocate([1], 8).blocks
    assert (first, second) == ([0, 1, 2], [3, 4])
    blocks.free(first)
    assert blocks.free_blocks == 4
    assert blocks.allocate([1], 8).blocks == [0, 1]


def test_running_out_raises_and_takes_nothing() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    with pytest.raises(OutOfBlocks, match="need 3 KV blocks, 2 free of 2"):
        blocks.allocate([1, 2], 9)
    assert blocks.free_blocks == 2


def test_a_block_freed_twice_is_an_error() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    table = blocks.allocate([1], 4).blocks
    blocks.free(table)
    with pytest.raises(ValueError):
        blocks.free(table)
    assert blocks.free_blocks == 2


# ---- prefix caching ---------------------------------------------------------------------------
def computed(blocks: BlockManager, ids: list[int], total: int, reuse: bool = True) -> list[int]:
    """Allocate a request and register every full block of `ids` as computed (what the postprocess does
    once its prefill has run); its block table."""
    allocation = blocks.allocate(ids, total, reuse=reuse)
    keys = chain_hashes(None, ids, blocks.block_size)
    blocks.register(allocation.blocks, keys, len(allocation.block_hashes))
    return allocation.blocks


def test_block_keys_are_chained_to_their_parent_and_stable_across_processes() -> None:
    first, second = chain_hashes(None, [1, 2, 3, 4, 5, 6, 7, 8, 9], 4)  # the partial block has no key
    assert second == block_key(first, [5, 6, 7, 8]) != block_key(None, [5, 6, 7, 8])
    # The same tokens after a different block are a different key.
    assert chain_hashes(None, [9, 9, 9, 9, 5, 6, 7, 8], 4)[1] != second
    # blake2b, not Python's salted hash: the same value in every process (every tensor-parallel rank).
    assert block_key(None, [1, 2, 3, 4]).hex() == "087a24230771ee662be37e5493b333d7"


def test_a_shared_prefix_is_reused_and_counted_per_holder() -> None:
    blocks = BlockManager(num_blocks=10, block_size=4)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    first = computed(blocks, prompt, 12)  # 3 blocks, 2 of them full of prompt
    assert blocks.free_blocks == 7 and blocks.cached_blocks == 2
    second = blocks.allocate(prompt[:8] + [50, 51], 12)
    assert second.blocks[:2] == first[:2] and second.blocks[2] not in first
    assert second.cached_tokens == 8 and second.block_hashes == chain_hashes(None, prompt[:8], 4)
    assert blocks.free_blocks == 6  # only the new block was taken
    blocks.free(first)
    assert blocks.free_blocks == 7  # the shared blocks are still held by the second request
    blocks.free(second.blocks)
    assert blocks.free_blocks == 10 and blocks.cached_blocks == 2  # free, and still cached
    with pytest.raises(ValueError):
        blocks.free(second.blocks[:1])


def test_an_identical_prompt_still_computes_its_last_token() -> None:
    blocks = BlockManager(num_blocks=10, block_size=4)
    prompt = list(range(1, 9))  # exactly two full blocks, both cached
    table = computed(blocks, prompt, 10)
    blocks.free(table)
    again = blocks.allocate(prompt, 10)
    assert again.cached_tokens == 4 and again.blocks[0] == table[0]  # the last block is computed again
    one_more = blocks.allocate(prompt + [9], 10)
    assert one_more.cached_tokens == 8


def test_a_strict_prefix_of_a_cached_prompt_reuses_its_full_blocks() -> None:
    blocks = BlockManager(num_blocks=30, block_size=4)
    prompt = list(range(1, 14))  # 3 full blocks + 1 token
    table = computed(blocks, prompt, 16)
    assert blocks.allocate(prompt[:10], 12).cached_tokens == 8
    assert blocks.allocate(prompt[:9], 12).cached_tokens == 8
    assert blocks.allocate(prompt[:8], 12).cached_tokens == 4
    assert blocks.allocate(prompt[:4], 8).cached_tokens == 0
    assert blocks.allocate([99] + prompt[1:], 16).cached_tokens == 0  # the first block differs
    blocks.free(table)


def test_prompt_logprob_requests_skip_the_reuse_and_duplicates_stay_uncached() -> None:
    blocks = BlockManager(num_blocks=10, block_size=4)
    prompt = list(range(1, 10))
    table = computed(blocks, prompt, 9)
    again = computed(blocks, prompt, 9, reuse=False)  # all computed anew; its copies get no key
    assert not set(again) & set(table)
    assert blocks.cached_blocks == 2
    blocks.free(again)
    assert blocks.free_blocks == 10 - 3 and blocks.allocate([7], 4).blocks == [again[0]]


def test_unheld_cached_blocks_are_evicted_least_recently_used_first() -> None:
    blocks = BlockManager(num_blocks=6, block_size=2)
    a, b, c = [1, 1, 1], [2, 2, 2], [3, 3, 3]  # one full block each
    tables = {name: computed(blocks, ids, 4) for name, ids in (("a", a), ("b", b), ("c", c))}
    for name in ("a", "b", "c"):
        blocks.free(tables[name])
    assert blocks.free_blocks == 6 and blocks.cached_blocks == 3
    blocks.free(blocks.allocate(a, 3).blocks)  # a is used again: now the most recent
    # The never-cached free blocks go first, then b's, then c's.
    taken = blocks.allocate([9], 8).blocks  # 4 blocks: 3 free + b's
    assert tables["b"][0] in taken and tables["c"][0] not in taken
    assert [len(blocks.lookup(x)) for x in (a, b, c)] == [1, 0, 1]


def test_caching_never_refuses_an_allocation_that_fits_without_it() -> None:
    rng = random.Random(7)
    on, off = BlockManager(num_blocks=24, block_size=4), BlockManager(num_blocks=24, block_size=4, prefix_caching=False)
    prefixes = [[rng.randrange(50) for _ in range(12)] for _ in range(3)]
    running: list[tuple[list[int], list[int]]] = []
    for _ in range(400):
        if running and (rng.random() < 0.4 or not off.can_allocate(40)):
            on_table, off_table = running.pop(rng.randrange(len(running)))
            on.free(on_table)
            off.free(off_table)
            continue
        prompt = rng.choice(prefixes)[: rng.randrange(1, 13)] + [rng.randrange(50) for _ in range(rng.randrange(6))]
        total = len(prompt) + rng.randrange(1, 20)
        try:
            off_table = off.allocate(prompt, total).blocks
        except OutOfBlocks:
            continue
        running.append((computed(on, prompt, total), off_table))  # must not raise
        assert on.free_blocks >= off.free_blocks
    for on_table, off_table in running:
        on.free(on_table)
        off.free(off_table)
    assert on.free_blocks == off.free_blocks == 24 and on.cached_blocks > 0


def test_same_calls_give_the_same_blocks_on_every_rank() -> None:
    def run() -> list[list[int]]:
        blocks, tables = BlockManager(num_blocks=12, block_size=2), []
        for ids in ([1, 2, 3, 4, 5], [1, 2, 3, 9], [7, 7, 7], [1, 2, 3, 4, 5, 6]):
            tables.append(computed(blocks, ids, len(ids) + 2))
            if len(tables) % 2 == 0:
                blocks.free(tables[-2])
        return tables

    assert run() == run()


def test_with_prefix_caching_off_nothing_is_cached() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2, prefix_caching=False)
    blocks.free(computed(blocks, [1, 2, 3], 4))
    assert blocks.cached_blocks == 0 and blocks.allocate([1, 2, 3], 4).cached_tokens == 0
