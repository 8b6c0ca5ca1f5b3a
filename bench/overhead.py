"""The router's per-token overhead over one stretch of load, from tgi-py's /metrics histogram.

    python -m bench.overhead snapshot http://127.0.0.1:3000 > before.json
    ... run the load ...
    python -m bench.overhead delta http://127.0.0.1:3000 before.json

`tgi_py_router_token_overhead` is the time from a shard response reaching the router to each of its
tokens' SSE bytes being written. `delta` prints the tokens observed in between, their mean, the share
under 1 ms and under each bucket, p50/p99 as the upper bound of the bucket that holds them, and the mean
time a decode call took beyond the shard's own compute (the gRPC leg, before the router's overhead starts).
"""

from __future__ import annotations

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

METRIC = "tgi_py_router_token_overhead"


# Decode calls: the router's time for the whole call, and the shard's own forward and token-choice times.
# What the call took beyond the last two is the gRPC leg (request, response, (de)serialisation, event-loop
# wake-ups) and the shard's bookkeeping: the part of a token's trip before the router's overhead starts.
STEP_METRICS = ("tgi_batch_inference_duration", "tgi_batch_forward_duration", "tgi_batch_decode_duration")


def snapshot(url: str) -> dict:
    text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10).read().decode()
    buckets: dict[str, float] = {}
    total = count = 0.0
    steps: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name in STEP_METRICS and sample.labels.get("method") == "decode" and (
                    sample.name.endswith("_sum") or sample.name.endswith("_count")):
                steps[sample.name] = sample.value
            if family.name != METRIC:
                continue
            if sample.name.endswith("_bucket"):
                buckets[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return {"buckets": buckets, "sum": total, "count": count, "steps": steps}


def _call_overhead_ms(before: dict, after: dict) -> float | None:
    """Mean over the decode calls in between of (router's call time - shard's forward - token choice)."""
    b, a = before.get("steps", {}), after.get("steps", {})
    delta = {name: a.get(name, 0.0) - b.get(name, 0.0) for name in a}
    calls = delta.get("tgi_batch_inference_duration_count", 0.0)
    if calls <= 0:
        return None
    sums = [delta.get(f"{name}_sum", 0.0) for name in STEP_METRICS]
    return (sums[0] - sums[1] - sums[2]) / calls * 1e3


def summarize(before: dict, after: dict) -> dict:
    count = after["count"] - before["count"]
    if count <= 0:
        return {"tokens": 0}
    cumulative = sorted(((float(le), after["buckets"][le] - before["buckets"].get(le, 0.0))
                         for le in after["buckets"]), key=lambda item: item[0])

    def quantile(q: float) -> float:
        return next(le for le, n in cumulative if n >= q * count)

    under_1ms = next(n for le, n in cumulative if le >= 0.001) / count
    return {"tokens": int(count), "mean_ms": (after["sum"] - before["sum"]) / count * 1e3,
            "p50_ms_at_most": quantile(0.5) * 1e3, "p99_ms_at_most": quantile(0.99) * 1e3,
            "share_under_1ms": under_1ms,
            "share_at_most_ms": {f"{le * 1e3:g}": round(n / count, 4) for le, n in cumulative if le != float("inf")},
            "decode_call_beyond_shard_compute_ms_mean": _call_overhead_ms(before, after)}


def main() -> None:
    command, url, *rest = sys.argv[1:]
    if command == "snapshot":
        print(json.dumps(snapshot(url)))
    elif command == "delta":
        with open(rest[0]) as handle:
            before = json.load(handle)
        print(json.dumps(summarize(before, snapshot(url))))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
