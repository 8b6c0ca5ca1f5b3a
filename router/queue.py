"""Waiting requests in FIFO order, and the rule that cuts the next batch from the head."""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

from common.arith import ceil_div
from router.stream import RequestStream
from router.types import Finished, ValidRequest

_ids = itertools.count()


@dataclass
class Entry:
    request: ValidRequest
    stream: RequestStream = field(default_factory=RequestStream)
    id: int = field(default_factory=lambda: next(_ids))
    queued_at: float = field(default_factory=time.monotonic)
    batched_at: float | None = None
    first_token_at: float | None = None  # prefill returned (the batcher stamps it)
    # prompt tokens the shard's prefix cache held, from the first generation (None before it)
    cached_prompt_tokens: int | None = None
    finished: Finished | None = None  # the last token's Finished (the batcher sets it)

    @property
    def max_tokens(self) -> int:
        return self.request.input_length + self.request.stopping.max_new_tokens

    def cache_tokens(self, block_size: int) -> int:
        """KV slots the shard reserves for this request: whole blocks."""
        return ceil_div(self.max_tokens, block_size) * block_size


@dataclass(frozen=True)
class BatchBudget:
    prefill_tokens: int  # --max-batch-prefill-tokens
    total_tokens: int  # what is left of --max-batch-total-tokens
    block_size: int
    max_size: int | None = None  # room left under --max-batch-size
    min_size: int = 1


class Queue:
    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, entry: Entry) -> None:
        self._entries.append(entry)

    def remove(self, entry: Entry) -> bool:
        try:
            self._entries.remove(entry)
            return True
        except ValueError:
            return False

    def take_all(self) -> list[Entry]:
        entries = list(self._entries)
        self._entries.clear()
        return entries

    def drop_cancelled(self) -> list[Entry]:
        cancelled = [e for e in self._entries if e.stream.cancelled]
        for entry in cancelled:
            self._entries.remove(entry)
        return cancelled

    def next_batch(self, budget: BatchBudget) -> list[Entry]:
        """The longest FIFO prefix that fits every budget; empty if fewer than min_size fit."""
        chosen: list[Entry] = []
        prefill = total = 0
        for entry in self._entries:
            if budget.max_size is not None and len(chosen) >= budget.max_size:
                break
            need_prefill = entry.request.input_length
            need_total = entry.cache_tokens(budget.block_size)
            if prefill + need_prefill > budget.prefill_tokens or total + need_total > budget.total_tokens:
                break
            prefill += need_prefill
            total += need_total
            chosen.append(entry)
        if len(chosen) < budget.min_size:
            return []
        for _ in chosen:
            self._entries.popleft()
        return chosen
