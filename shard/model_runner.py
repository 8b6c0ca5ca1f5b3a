"""Runs the tensor-parallel model over the paged KV cache for a list of requests.

The engine decides which requests step; the runner owns the cache, reserves each request's blocks and
turns requests into the flattened inputs the model takes.
"""

from __future__ import annotations

from typing import Protocol

import torch

from shard.distributed import Distributed
from shard.kv_cache import BlockAllocator, KVCache, blocks_needed, context_slots, slots_of
from shard.models.llama import AttentionInputs, LlamaModel
from shard.request_state import RequestState


class ModelRunner(Protocol):
    """What the engine needs from a model: room per request, and logits for prefill and decode."""

    block_size: int

    @property
    def free_blocks(self) -> int: ...
    @property
    def max_position_embeddings(self) -> int: ...
    def allocate(self, max_tokens: int = 0) -> int: ...
    def reserve(self, state: RequestState) -> None: ...
    def release(self, state: RequestState) -> None: ...
    def prefill(self, states: list[RequestState], logits_rows: list[int]) -> torch.Tensor: ...
    def decode(self, states: list[RequestState]) -> torch.Tensor: ...


class PagedRunner:
    def __init__(self, model: LlamaModel, dist: Distributed, kv_cache_bytes: int, block_size: int = 16) -> None:
        self.model = model
        self.dist = dist
        self.kv_cache_bytes = kv_cache_bytes
        self.block_size = block_size
        self.cache: KVCache | None = None
        self.allocator: BlockAllocator | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def max_position_embeddings(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def free_blocks(self) -> int:
        return self.allocator.free_blocks if self.allocator else 0

    def allocate(self, max_tokens: int = 0) -> int:
        """(Re)allocate the KV pool within the byte budget (and max_tokens if given); its size in tokens."""
        self.cache = None  # free the old pool before allocating the new one
        cfg = self.model.config
        per_token = KVCache.bytes_per_token(cfg.num_layers, self.model.local_kv_heads, cfg.head_dim, self.model.dtype)
        num_blocks = self.kv_cache_bytes // (per_token * self.block_size)
        if max_tokens:
            num_blocks = min(num_blocks, blocks_needed(max_tokens, self.block_size))
        # Every rank must agree, or the router would plan for a budget some rank cannot hold.
        num_blocks = self.dist.all_reduce_min(num_blocks)
        if num_blocks < 1:
            raise MemoryError(f"--kv-cache-bytes {self.kv_cache_bytes} holds no {self.block_size}-token block")
        self.cache = KVCache.allocate(cfg.num_layers, num_blocks, self.block_size, self.model.local_kv_heads,
                                      cfg.head_dim, self.model.dtype, self.model.device)
        self.allocator = BlockAllocator(num_blocks)
        return num_blocks * self.block_size

    def reserve(self, state: RequestState) -> None:
        """Blocks for the whole request up front: it can never run out of room mid-generation."""
        if self.cache is None:
            self.allocate()
        assert self.allocator is not None
        state.block_table = self.allocator.allocate(blocks_needed(state.max_tokens, self.block_size))

    def release(self, state: RequestState) -> None:
        if self.allocator is not None and state.block_table:
            self.allocator.free(state.block_table)
        state.block_table = []

    def prefill(self, states: list[RequestState], logits_rows: list[int]) -> torch.Tensor:
        """Logits at the given rows of the flattened prompts (each request attends to its own prompt)."""
        assert self.cache is not None
        dev = self.device
        lengths = [s.input_length for s in states]
        ids = torch.tensor([t for s in states for t in s.all_ids[: s.input_length]], device=dev)
        positions = torch.cat([torch.arange(n, device=dev) for n in lengths])
        slots = [slot for s in states for slot in slots_of(s.block_table, 0, s.input_length, self.block_size)]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        attn = AttentionInputs(torch.tensor(slots, device=dev), prefill_spans=list(zip(starts, lengths, strict=True)))
        logits = self.model.forward(ids, positions, attn, self.cache, torch.tensor(logits_rows, device=dev))
        for s in states:
            s.cached_length = s.input_length
        return logits

    def decode(self, states: list[RequestState]) -> torch.Tensor:
        """Logits [B, vocab] after feeding each request's newest token."""
        assert self.cache is not None
        dev = self.device
        bs = self.block_size
        ids = torch.tensor([s.all_ids[-1] for s in states], device=dev)
        positions = torch.tensor([s.cached_length for s in states], device=dev)
        new_slots = [s.block_table[s.cached_length // bs] * bs + s.cached_length % bs for s in states]
        for s in states:
            s.cached_length += 1
        slots, mask = context_slots([s.block_table for s in states], [s.cached_length for s in states], bs, dev)
        attn = AttentionInputs(torch.tensor(new_slots, device=dev), context_slots=slots, context_mask=mask)
        return self.model.forward(ids, positions, attn, self.cache, torch.arange(len(states), device=dev))
