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


def test_the_decode_calls_time_beyond_the_shards_compute() -> None:
    before = snapshot({"0.001": 0, "+Inf": 0}, 0.0)
    after = snapshot({"0.001": 4, "+Inf": 4}, 0.002)
    before["steps"] = {"tgi_batch_inference_duration_count": 10, "tgi_batch_inference_duration_sum": 1.0,
                       "tgi_batch_forward_duration_sum": 0.8, "tgi_batch_decode_duration_sum": 0.1}
    # 20 more calls: 0.5 s in the router, 0.42 s of forward and 0.06 s of token choice -> 1 ms each beyond
    after["steps"] = {"tgi_batch_inference_duration_count": 30, "tgi_batch_inference_duration_sum": 1.5,
                      "tgi_batch_forward_duration_sum": 1.22, "tgi_batch_decode_duration_sum": 0.16}
    assert summarize(before, after)["decode_call_beyond_shard_compute_ms_mean"] == pytest.approx(1.0)
    assert summarize(before, before | {"steps": {}})["tokens"] == 0
