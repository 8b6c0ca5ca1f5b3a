"""The KV block allocator on its own: whole requests in, block tables out, counts back to free."""

from __future__ import annotations

import pytest

from shard.block_manager import BlockManager, OutOfBlocks


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
