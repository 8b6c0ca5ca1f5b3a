"""Paged KV cache: fixed-size blocks in one pool per layer (the tensors), and where a position's slot is.

Which request holds which blocks is shard/block_manager.py's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.arith import ceil_div


@dataclass
class KVCache:
    """keys[layer] / values[layer]: [num_blocks * block_size, kv_heads, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    block_size: int

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        shape = (num_blocks * block_size, kv_heads, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        return cls(keys=keys, values=values, block_size=block_size)

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def slots_of(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slot of every position in [start, end) of a sequence with this block table."""
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def context_slots(
    block_tables: list[list[int]], lengths: list[int], block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots [B, L] of each sequence's cached positions (padded) and the mask [B, 1, 1, L] of real ones."""
    table, lengths_tensor = padded_block_tables(block_tables, lengths, block_size, device)
    positions = torch.arange(max(lengths), device=device)
    slots = table.long()[:, positions // block_size] * block_size + positions % block_size
    mask = positions[None, :] < lengths_tensor[:, None]
    return slots, mask[:, None, None, :]


def padded_block_tables(
    tables: list[list[int]], lengths: list[int], block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's blocks covering its `lengths` cached positions, padded: int32 [B, max_blocks], and
    the lengths as int32 [B]. Attention that reads the paged cache in place needs only these."""
    max_blocks = ceil_div(max(lengths), block_size)
    rows = [bt[:max_blocks] + [0] * (max_blocks - len(bt[:max_blocks])) for bt in tables]
    return (torch.tensor(rows, dtype=torch.int32, device=device),
            torch.tensor(lengths, dtype=torch.int32, device=device))
