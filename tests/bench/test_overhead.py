"""bench/overhead.py: the per-token overhead of one stretch of load, from two /metrics snapshots."""

from __future__ import annotations

import pytest

from bench.overhead import summarize


def snapshot(buckets: dict[str, float], total: float) -> dict:
    return {"buckets": buckets, "sum": total, "count": buckets["+Inf"]}


def test_delta_counts_only_the_tokens_between_the_snapshots() -> None:
    before = snapshot({"0.0005": 10, "0.001": 10, "0.005": 10, "+Inf": 10}, 0.002)
    # 100 new tokens: 60 under 0.5 ms, 30 more under 1 ms, 9 more under 5 ms, 1 beyond
    after = snapshot({"0.0005": 70, "0.001": 100, "0.005": 109, "+Inf": 110}, 0.002 + 0.1)
    got = summarize(before, after)
    assert got["tokens"] == 100
    assert got["mean_ms"] == pytest.approx(1.0)
    assert got["p50_ms_at_most"] == pytest.approx(0.5)
    assert got["p99_ms_at_most"] == pytest.approx(5.0)
    assert got["share_under_1ms"] == pytest.approx(0.9)
    assert got["share_at_most_ms"] == {"0.5": 0.6, "1": 0.9, "5": 0.99}


def test_no_tokens_in_between() -> None:
    same = snapshot({"0.001": 5, "+Inf": 5}, 0.001)
    assert summarize(same, same) == {"tokens": 0}
