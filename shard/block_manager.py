"""Which KV cache blocks each request holds, and which full blocks outlive it as a prefix cache.

The cache itself (the tensors) is shard/kv_cache.py; this only hands out block ids. A request gets all
the blocks it can ever need when it is admitted (prompt + max_new_tokens), so it never runs out of room
mid-generation, and gives them back when it finishes or is filtered out.

Prefix caching (on unless `prefix_caching=False`): a block full of tokens whose keys and values are
computed is keyed by `chain_hashes` (its tokens chained to its parent block's key, so the same tokens
after a different prefix are a different key) once shard/postprocess.py reports it full (`register`).
`allocate` looks the prompt's full blocks up, in order, and hands the hits out shared: every block has a
reference count, a shared block is only read (a request writes only from its cached length on, which
starts after its hits), and a block no request holds keeps its key in a least-recently-used queue. It
is evicted (its key forgotten, its id handed out again) only when a block is needed and no never-keyed
block is free: `free_blocks` counts it as free, so caching never refuses an allocation that would fit
without it. Every step is deterministic (blake2b keys, ordered containers): the same calls in the same
order give the same block ids on every tensor-parallel rank.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.arith import ceil_div


class OutOfBlocks(RuntimeError):
    pass


def block_key(parent: bytes | None, ids: Sequence[int]) -> bytes:
    """The key of a block holding `ids` after the block keyed `parent` (None: the sequence's first block).

    blake2b (16 bytes) over the parent's key and the ids as little-endian int64: the same in every
    process and run, unlike Python's salted str hash, so every tensor-parallel rank agrees."""
    digest = hashlib.blake2b(parent or b"", digest_size=16)
    digest.update(struct.pack(f"<{len(ids)}q", *ids))
    return digest.digest()


def chain_hashes(parent: bytes | None, ids: Sequence[int], block_size: int) -> list[bytes]:
    """Keys of the full blocks of `ids` (a trailing partial block has none), chained from `parent`."""
    keys: list[bytes] = []
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = block_key(parent, ids[start: start + block_size])
        keys.append(parent)
    return keys


@dataclass(frozen=True)
class Allocation:
    blocks: list[int]  # the request's block table: block i holds its positions [i * size, (i + 1) * size)
    cached_tokens: int = 0  # leading prompt tokens whose keys/values these blocks already hold
    # Keys of the leading blocks that hold those cached tokens (cached_tokens // block size of them).
    block_hashes: list[bytes] = field(default_factory=list)


class BlockManager:
    """Hands out block ids; a request's blocks need not be contiguous (its block table maps them)."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free = list(range(num_blocks - 1, -1, -1))  # never keyed, popped from the end: lowest first
        self._ref_counts = [0] * num_blocks
        self._block_of_key: dict[bytes, int] = {}
        self._key_of_block: dict[int, bytes] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # keyed, held by nobody: oldest first

    @property
    def free_blocks(self) -> int:
        """Blocks an allocation may take: the never-keyed free ones and the cached ones nobody holds."""
        return len(self._free) + len(self._evictable)

    @property
    def cached_blocks(self) -> int:
        """Blocks with a key (held or not)."""
        return len(self._key_of_block)

    def blocks_for(self, tokens: int) -> int:
        return ceil_div(tokens, self.block_size)

    def can_allocate(self, total_tokens: int) -> bool:
        return self.blocks_for(total_tokens) <= self.free_blocks

    def lookup(self, prompt_ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """(block, key) of the prompt's leading full blocks that are cached, in order, up to the first miss.

        At most (len - 1) // block_size blocks: the prompt's last token is always computed (its logits
        choose the first generated token)."""
        if not self.prefix_caching:
            return []
        size = self.block_size
        hits: list[tuple[int, bytes]] = []
        key: bytes | None = None
        for start in range(0, (len(prompt_ids) - 1) // size * size, size):
            key = block_key(key, prompt_ids[start: start + size])
            block = self._block_of_key.get(key)
            if block is None:
                break
            hits.append((block, key))
        return hits

    def allocate(self, prompt_ids: Sequence[int], total_tokens: int, reuse: bool = True) -> Allocation:
        """Blocks for a request of `total_tokens` tokens, the first of which are `prompt_ids`: the cached
        blocks of the prompt's longest cached prefix (unless `reuse` is False), then fresh ones."""
        count = self.blocks_for(total_tokens)
        hits = self.lookup(prompt_ids)[:count] if reuse else []
        # Hits some request holds cost nothing; those nobody holds are taken out of the free count.
        held = sum(1 for block, _ in hits if self._ref_counts[block])
        if count - held > self.free_blocks:
            raise OutOfBlocks(f"need {count} KV blocks, {self.free_blocks} free of {self.num_blocks}")
        for block, _ in hits:
            if self._ref_counts[block] == 0:
                del self._evictable[block]
            self._ref_counts[block] += 1
        blocks = [block for block, _ in hits] + [self._take() for _ in range(count - len(hits))]
        return Allocation(blocks, len(hits) * self.block_size, [key for _, key in hits])

    def _take(self) -> int:
        """A block for a request to write: a never-keyed free one, else the least recently used cached one."""
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of_key[self._key_of_block.pop(block)]
        self._ref_counts[block] = 1
        return block

    def register(self, blocks: Sequence[int], keys: Sequence[bytes], first: int = 0) -> None:
        """Blocks `blocks[first:len(keys)]` of a request are now full of computed keys/values: cache them
        under `keys[i]`. A key already cached (the same prefix computed by another request at the same
        time) keeps its block; this request's copy stays uncached and is freed as usual."""
        if not self.prefix_caching:
            return
        for i in range(first, len(keys)):
            block, key = blocks[i], keys[i]
            if key in self._block_of_key or block in self._key_of_block:
                continue
            self._block_of_key[key] = block
            self._key_of_block[block] = key

    def free(self, blocks: Sequence[int]) -> None:
        """A request gives its blocks back. A block no request holds any more is free again: cached (most
        recently used) if it has a key, else at the front of the free list."""
        # Reversed: a request's last blocks are evicted first, its first block is handed out first again.
        for block in reversed(blocks):
            count = self._ref_counts[block] - 1
            if count < 0:
                raise ValueError(f"KV block {block} freed more often than it was allocated")
            self._ref_counts[block] = count
            if count:
                continue
            if block in self._key_of_block:
                self._evictable[block] = None
            else:
                self._free.append(block)
