"""Runs the tensor-parallel model over the paged KV cache for a list of requests.

The engine decides which requests step; the runner owns the cache, reserves each request's blocks and
turns requests into the flattened inputs the model takes.
"""

from __future__ import annotations

from typing import Protocol

import torch

from shard.distributed import Distributed
from shard.kv_cache import BlockAllocator, KVCache, blocks_needed, context_slots, padded_block_tables, slots_of
from shard.models.llama import AttentionInputs, LlamaModel, PrefillSpan
from shard.request_state import RequestState


class ModelRunner(Protocol):
    """What the engine needs from a model: room per request, and logits for prefill and decode."""

    block_size: int
    # Whether a prompt may be fed in several chunks (its later chunks attending to the cached ones).
    supports_chunking: bool

    @property
    def free_blocks(self) -> int: ...
    @property
    def max_position_embeddings(self) -> int: ...
    def allocate(self, max_tokens: int = 0) -> int: ...
    def reserve(self, state: RequestState) -> None: ...
    def release(self, state: RequestState) -> None: ...
    def step(self, decoding: list[RequestState], chunks: list[tuple[RequestState, int]],
             logits_rows: list[int]) -> torch.Tensor: ...


class PagedRunner:
    def __init__(self, model: LlamaModel, dist: Distributed, kv_cache_bytes: int, block_size: int = 16) -> None:
        self.model = model
        self.dist = dist
        self.kv_cache_bytes = kv_cache_bytes
        self.block_size = block_size
        self.cache: KVCache | None = None
        self.allocator: BlockAllocator | None = None
        self.supports_chunking = True

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

    def step(self, decoding: list[RequestState], chunks: list[tuple[RequestState, int]],
             logits_rows: list[int]) -> torch.Tensor:
        """One forward for every row: a token for each decoding request, then each prompt chunk.

        Rows are numbered in that order (decode rows first, then the chunks' tokens); logits come back
        for `logits_rows` only. A chunk continues its prompt from the request's cached length.
        """
        assert self.cache is not None
        dev, bs = self.device, self.block_size
        sequences = decoding + [s for s, _ in chunks]
        rows_per_sequence = [1] * len(decoding) + [n for _, n in chunks]
        ids: list[int] = [s.all_ids[-1] for s in decoding]
        positions: list[int] = [s.cached_length for s in decoding]
        slots: list[int] = [s.block_table[s.cached_length // bs] * bs + s.cached_length % bs for s in decoding]
        for s, n in chunks:
            ids.extend(s.all_ids[s.cached_length: s.cached_length + n])
            positions.extend(range(s.cached_length, s.cached_length + n))
            slots.extend(slots_of(s.block_table, s.cached_length, s.cached_length + n, bs))
        position_tensor = torch.tensor(positions, device=dev)
        if self.model.ops.reads_paged_cache:
            # Every row, prompt tokens included, attends through its sequence's block table up to its
            # own position: one kernel call for the whole step.
            for s, n in zip(sequences, rows_per_sequence, strict=True):
                s.cached_length += n
            tables, _ = padded_block_tables([s.block_table for s in sequences], [s.cached_length for s in sequences],
                                            bs, dev)
            if chunks:
                tables = tables.repeat_interleave(torch.tensor(rows_per_sequence, device=dev), dim=0)
            attn = AttentionInputs(torch.tensor(slots, device=dev), paged_rows=len(ids), block_size=bs,
                                   block_tables=tables, context_lengths=(position_tensor + 1).int())
        else:
            spans = self._prefill_spans(chunks, len(decoding))
            for s, n in zip(sequences, rows_per_sequence, strict=True):
                s.cached_length += n
            attn = AttentionInputs(torch.tensor(slots, device=dev), prefill_spans=spans, paged_rows=len(decoding),
                                   block_size=bs)
            if decoding:
                attn.context_slots, attn.context_mask = context_slots(
                    [s.block_table for s in decoding], [s.cached_length for s in decoding], bs, dev)
        return self.model.forward(torch.tensor(ids, device=dev), position_tensor, attn, self.cache,
                                  torch.tensor(logits_rows, dtype=torch.long, device=dev))

    def _prefill_spans(self, chunks: list[tuple[RequestState, int]], first_row: int) -> list[PrefillSpan]:
        """Where each chunk's rows are, and for a later chunk of a prompt, the cached part it attends to."""
        dev, bs = self.device, self.block_size
        spans: list[PrefillSpan] = []
        row = first_row
        for s, n in chunks:
            start = s.cached_length
            span = PrefillSpan(start_row=row, length=n, context_length=start)
            if start:
                span.context_slots = torch.tensor(slots_of(s.block_table, 0, start + n, bs), device=dev)
                keys = torch.arange(start + n, device=dev)
                span.mask = keys[None, :] <= (start + torch.arange(n, device=dev))[:, None]
            spans.append(span)
            row += n
        return spans
