"""What a step's attention reads: the runner's description of each sequence's rows, and the metadata
an ops object (shard/models/ops.py) prepares from it for its own attention kernels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SequenceRows:
    """One sequence's rows in a step: positions [start, start + length) of it, whose keys and values go
    to the cache through `block_table`. A decoding sequence has one row (its newest token); a prompt
    chunk has one per token and may follow an earlier chunk of the same prompt (start > 0)."""

    block_table: list[int]
    start: int
    length: int
    is_prompt: bool

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class PrefillSpan:
    """`length` prompt tokens at rows [start_row, start_row + length) of the flattened batch, following
    `context_length` tokens of the same prompt already in the cache (a later chunk of a long prompt)."""

    start_row: int
    length: int
    context_length: int = 0
    context_slots: torch.Tensor | None = None  # slots of positions [0, context + length)
    mask: torch.Tensor | None = None  # [length, context + length]: causal, offset by the context


@dataclass
class AttentionInputs:
    """Where the new tokens' keys/values go and what each row attends to.

    The first `paged_rows` rows each attend to their sequence's cache up to their own position (their
    key and value are stored first): given as `block_tables` [B, max_blocks] (int32) and
    `context_lengths` [B] (int32) to ops that read the paged cache in place, where every row is one
    (decode tokens and prompt tokens alike), otherwise as the cache slots `context_slots` [B, L] where
    `context_mask` [B, 1, 1, L] is true, for decode tokens only. Then the rows after them are prompt
    chunks (`prefill_spans`), each attending causally to its own prompt.
    """

    slot_mapping: torch.Tensor
    prefill_spans: list[PrefillSpan] = field(default_factory=list)
    paged_rows: int = 0
    block_size: int = 16
    context_slots: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    block_tables: torch.Tensor | None = None
    context_lengths: torch.Tensor | None = None
