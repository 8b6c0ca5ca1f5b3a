"""The batch-cutting rule, without a model or a network."""

from __future__ import annotations

from router.queue import BatchBudget, Entry, Queue
from router.types import SamplingParameters, StoppingParameters, ValidRequest


def entry(input_length: int, max_new_tokens: int) -> Entry:
    return Entry(ValidRequest(inputs="x", input_ids=tuple(range(input_length)), sampling=SamplingParameters(),
                              stopping=StoppingParameters(max_new_tokens=max_new_tokens)))


def budget(prefill: int = 1000, total: int = 10_000, block: int = 16, **kw) -> BatchBudget:
    return BatchBudget(prefill_tokens=prefill, total_tokens=total, block_size=block, **kw)


def test_cuts_fifo_prefix_under_the_prefill_budget() -> None:
    q = Queue()
    entries = [entry(40, 10) for _ in range(5)]
    for e in entries:
        q.append(e)
    assert q.next_batch(budget(prefill=100)) == entries[:2]
    assert len(q) == 3
    assert q.next_batch(budget(prefill=100)) == entries[2:4]


def test_total_budget_counts_whole_kv_blocks() -> None:
    q = Queue()
    first, second = entry(10, 7), entry(10, 6)  # 17 tokens -> 2 blocks of 16 = 32 slots; 16 -> 1 block
    q.append(first)
    q.append(second)
    assert q.next_batch(budget(total=47)) == [first]
    assert len(q) == 1
    assert len(q.next_batch(budget(total=16))) == 1


def test_never_skips_the_head_to_keep_fifo_order() -> None:
    q = Queue()
    big, small = entry(900, 10), entry(10, 10)
    q.append(big)
    q.append(small)
    assert q.next_batch(budget(prefill=500)) == []
    assert len(q) == 2


def test_min_size_and_max_size() -> None:
    q = Queue()
    for _ in range(4):
        q.append(entry(10, 10))
    assert q.next_batch(budget(min_size=5)) == []
    assert len(q) == 4
    assert len(q.next_batch(budget(max_size=3))) == 3
    assert len(q) == 1


def test_cancelled_entries_are_dropped_and_removed() -> None:
    q = Queue()
    a, b, c = entry(5, 5), entry(5, 5), entry(5, 5)
    for e in (a, b, c):
        q.append(e)
    b.stream.cancel()
    assert q.drop_cancelled() == [b]
    assert q.remove(c) is True and q.remove(c) is False
    assert q.next_batch(budget()) == [a]
