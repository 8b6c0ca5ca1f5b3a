"""Runs the tensor-parallel model over the paged KV cache for one planned step.

The scheduler decides which requests step and by how much; the runner owns the cache and its block
manager, turns the plan into the flattened inputs the model takes and returns the logits. It reads the
requests and never changes them: shard/postprocess.py advances them once the step has run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from common.arith import ceil_div
from shard.block_manager import Allocation, BlockManager
from shard.distributed import Distributed
from shard.kv_cache import KVCache, slots_of
from shard.models.attention import SequenceRows
from shard.models.llama import LlamaModel
from shard.models.ops import KernelOps
from shard.request_state import RequestState
from shard.scheduler import StepPlan


class ModelRunner(Protocol):
    """What the engine needs from a model: room per request, and logits for a planned step."""

    block_size: int
    # Whether a prompt may be fed in several chunks (its later chunks attending to the cached ones).
    supports_chunking: bool
    attention_impl: str  # what the attention is (InfoResponse.attention_impl)
    # Whether full blocks are shared between requests and kept after them (InfoResponse.use_prefix_caching).
    prefix_caching: bool

    @property
    def free_blocks(self) -> int: ...
    @property
    def max_position_embeddings(self) -> int: ...
    def allocate(self, max_tokens: int = 0) -> int: ...
    def reserve(self, request: RequestState) -> Allocation: ...
    def release(self, request: RequestState) -> None: ...
    def register_blocks(self, blocks: Sequence[int], keys: Sequence[bytes], first: int) -> None: ...
    def run(self, plan: StepPlan[RequestState]) -> torch.Tensor: ...


# Rows a step may take before drafts stop being added (without a model-specific limit).
DEFAULT_STEP_ROWS = 32
# The CPU kernels compute each of up to 4 input rows exactly as they would compute it alone
# (shard/kernels/cpu_gemv.c: up to XB = 4 rows go through the per-row kernel; more go through blocks,
# which round differently, the same for any number of rows past 4). A step whose own rows are within
# this keeps its drafts within it too, so that greedy output is the same bits as without speculation.
CPU_KERNEL_EXACT_ROWS = 4


class PagedRunner:
    def __init__(self, model: LlamaModel, dist: Distributed, kv_cache_bytes: int, block_size: int = 16,
                 prefix_caching: bool = True) -> None:
        self.model = model
        self.dist = dist
        self.kv_cache_bytes = kv_cache_bytes
        self.block_size = block_size
        self.cache: KVCache | None = None
        self.blocks: BlockManager | None = None
        self.supports_chunking = True
        self.prefix_caching = prefix_caching
        self.attention_impl = model.ops.attention_impl

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def max_position_embeddings(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def free_blocks(self) -> int:
        return self.blocks.free_blocks if self.blocks else 0

    # Decoding requests may verify drafts in a step (shard/speculation.py): every row reads the paged cache.
    supports_speculation = True

    @property
    def max_step_rows(self) -> int:
        """Rows up to which a step stays on the fast few-row path: the one-call layers' limit where the
        model has them, else DEFAULT_STEP_ROWS. Drafts are only added below it."""
        one_call = getattr(self.model, "one_call_layers", None)
        return one_call.max_rows if one_call is not None else DEFAULT_STEP_ROWS

    @property
    def quantized(self) -> bool:
        """Whether the weights are int8 / int4 (--quantize): an extra row costs more of a step there."""
        return getattr(self.model, "quantize", None) is not None

    @property
    def exact_step_rows(self) -> int:
        """Rows up to which a row's logits do not depend on how many rows share its step (0: no such
        bound known, e.g. torch's BLAS, whose blocking may change with the row count)."""
        return CPU_KERNEL_EXACT_ROWS if isinstance(self.model.ops, KernelOps) else 0

    def allocate(self, max_tokens: int = 0) -> int:
        """(Re)allocate the KV pool within the byte budget (and max_tokens if given); its size in tokens."""
        self.cache = None  # free the old pool before allocating the new one
        cfg = self.model.config
        per_token = KVCache.bytes_per_token(cfg.num_layers, self.model.local_kv_heads, cfg.head_dim, self.model.dtype)
        num_blocks = self.kv_cache_bytes // (per_token * self.block_size)
        if max_tokens:
            num_blocks = min(num_blocks, ceil_div(max_tokens, self.block_size))
        # Every rank must agree, or the router would plan for a budget some rank cannot hold.
        num_blocks = self.dist.all_reduce_min(num_blocks)
        if num_blocks < 1:
            raise MemoryError(f"--kv-cache-bytes {self.kv_cache_bytes} holds no {self.block_size}-token block")
        self.cache = KVCache.allocate(cfg.num_layers, num_blocks, self.block_size, self.model.local_kv_heads,
                                      cfg.head_dim, self.model.dtype, self.model.device)
        self.blocks = BlockManager(num_blocks, self.block_size, self.prefix_caching)
        return num_blocks * self.block_size

    def reserve(self, request: RequestState) -> Allocation:
        """Blocks for the whole request up front: it can never run out of room mid-generation. Its prompt's
        longest cached prefix comes shared from the prefix cache, unless it wants every prompt token's
        logprob (decoder_input_details), which needs the logits of every prompt position."""
        if self.cache is None:
            self.allocate()
        assert self.blocks is not None
        return self.blocks.allocate(request.all_ids[: request.input_length], request.max_tokens,
                                    reuse=not request.prefill_logprobs)

    def register_blocks(self, blocks: Sequence[int], keys: Sequence[bytes], first: int) -> None:
        if self.blocks is not None:
            self.blocks.register(blocks, keys, first)

    def release(self, request: RequestState) -> None:
        if self.blocks is not None and request.block_table:
            self.blocks.free(request.block_table)

    def run(self, plan: StepPlan[RequestState]) -> torch.Tensor:
        """One forward for every row of the plan: a token for each decoding request, then each prompt chunk.

        Logits come back for plan.logits_rows only, in that order.
        """
        assert self.cache is not None
        dev, bs = self.device, self.block_size
        sequences = [SequenceRows(r.block_table, r.cached_length, 1, is_prompt=False) for r in plan.decoding]
        # A request verifying drafts is fed like a prompt chunk: its rows attend causally to each other and
        # to its cache (the ops path it takes is the chunks', not the one-row decode one).
        sequences += [SequenceRows(v.request.block_table, v.start, v.length, is_prompt=True) for v in plan.verifying]
        sequences += [SequenceRows(c.request.block_table, c.start, c.length, is_prompt=True) for c in plan.chunks]
        ids = [r.all_ids[-1] for r in plan.decoding]  # the newest token: not in the cache yet
        for v in plan.verifying:
            ids.append(v.request.all_ids[-1])
            ids.extend(v.drafts)
        for chunk in plan.chunks:
            ids.extend(chunk.request.all_ids[chunk.start: chunk.end])
        positions: list[int] = []
        slots: list[int] = []
        for s in sequences:
            positions.extend(range(s.start, s.end))
            slots.extend(slots_of(s.block_table, s.start, s.end, bs))
        position_tensor = torch.tensor(positions, device=dev)
        attn = self.model.ops.attention_inputs(sequences, position_tensor, torch.tensor(slots, device=dev), bs)
        return self.model.forward(torch.tensor(ids, device=dev), position_tensor, attn, self.cache,
                                  torch.tensor(plan.logits_rows, dtype=torch.long, device=dev))
