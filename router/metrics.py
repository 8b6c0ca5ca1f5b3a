"""Prometheus metrics under TGI's names and types (counters without the `_total` suffix, as TGI has)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest

disable_created_metrics()

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.request_count = Counter("tgi_request_count", "Requests received", registry=r)
        self.request_success = Counter("tgi_request_success", "Requests that completed", registry=r)
        self.request_failure = Counter("tgi_request_failure", "Requests that failed", ["err"], registry=r)
        self.batch_inference_count = Counter("tgi_batch_inference_count", "Shard calls", ["method"], registry=r)
        self.batch_inference_success = Counter("tgi_batch_inference_success", "Shard calls that succeeded",
                                               ["method"], registry=r)
        self.queue_size = Gauge("tgi_queue_size", "Requests waiting in the queue", registry=r)
        self.batch_current_size = Gauge("tgi_batch_current_size", "Requests in the running batch", registry=r)
        self.batch_current_max_tokens = Gauge("tgi_batch_current_max_tokens",
                                              "KV tokens reserved by the running batch", registry=r)
        h = self._histogram
        self.request_duration = h("tgi_request_duration", "End-to-end request time")
        self.request_validation_duration = h("tgi_request_validation_duration", "Validation time")
        self.request_queue_duration = h("tgi_request_queue_duration", "Time spent waiting in the queue")
        self.request_inference_duration = h("tgi_request_inference_duration", "Time from first batch to end")
        self.request_mean_time_per_token_duration = h("tgi_request_mean_time_per_token_duration",
                                                      "Inference time divided by generated tokens")
        self.request_input_length = h("tgi_request_input_length", "Prompt tokens", TOKEN_BUCKETS)
        self.request_max_new_tokens = h("tgi_request_max_new_tokens", "max_new_tokens asked", TOKEN_BUCKETS)
        self.request_generated_tokens = h("tgi_request_generated_tokens", "Tokens generated", TOKEN_BUCKETS)
        self.batch_next_size = h("tgi_batch_next_size", "Size of each new batch", BATCH_BUCKETS)
        self.batch_forward_duration = h("tgi_batch_forward_duration", "Model forward time", labels=["method"])
        self.batch_decode_duration = h("tgi_batch_decode_duration", "Token choice and text time",
                                       labels=["method"])
        self.batch_filter_duration = h("tgi_batch_filter_duration", "FilterBatch time", labels=["method"])
        self.batch_inference_duration = h("tgi_batch_inference_duration", "Shard call time", labels=["method"])
        # ours: from the router receiving a token from the shard to its SSE bytes being written
        self.token_overhead = h("tgi_py_router_token_overhead", "Shard response received -> SSE write done",
                                (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1))
        # Overheads measured but not yet observed: see token_written.
        self._pending_overheads: list[float] = []
        # ours: streamed tokens the batcher wrote to the client itself while the handler idled (router/sse.py);
        # the others went through the handler (clients that lag, a response not yet open)
        self.tokens_written_directly = Counter("tgi_py_router_tokens_written_directly",
                                               "Streamed tokens written without waking their handler", registry=r)
        # ours: prompt tokens of the requests that got their first token, and how many of them the shards'
        # prefix cache held (hit / prompt is the hit ratio); exported without `_total`, as TGI's counters
        self.prefix_cache_prompt_tokens = Counter("tgi_py_prefix_cache_prompt_tokens",
                                                  "Prompt tokens of requests that were prefilled", registry=r)
        self.prefix_cache_hit_tokens = Counter("tgi_py_prefix_cache_hit_tokens",
                                               "Prompt tokens reused from the prefix cache", registry=r)
        # ours: speculation (--speculate): draft tokens the shards verified, and how many the model accepted
        # (accepted / draft is the acceptance rate; each accepted one is a token without a forward of its own)
        self.speculative_draft_tokens = Counter("tgi_py_speculative_draft_tokens",
                                                "Draft tokens verified (n-gram speculation)", registry=r)
        self.speculative_accepted_tokens = Counter("tgi_py_speculative_accepted_tokens",
                                                   "Draft tokens accepted (n-gram speculation)", registry=r)
        self._counter_names = [m._name for m in (
            self.request_count, self.request_success, self.request_failure,
            self.batch_inference_count, self.batch_inference_success,
            self.prefix_cache_prompt_tokens, self.prefix_cache_hit_tokens,
            self.speculative_draft_tokens, self.speculative_accepted_tokens)]

    def _histogram(self, name: str, doc: str, buckets: tuple = DURATION_BUCKETS,
                   labels: list[str] | None = None) -> Histogram:
        return Histogram(name, doc, labels or [], buckets=buckets, registry=self.registry)

    def token_written(self, received_at: float) -> None:
        """A streamed token's bytes are written: its overhead is measured now and observed at the next
        flush_token_overheads. The batcher flushes after each step's tokens are out, a scrape before it
        reads, so nothing is lost; deferring keeps a histogram update (more than the write it measures)
        from delaying the tokens still to be written in the same step."""
        self._pending_overheads.append(time.monotonic() - received_at)

    def flush_token_overheads(self) -> None:
        pending, self._pending_overheads = self._pending_overheads, []
        observe = self.token_overhead.observe
        for seconds in pending:
            observe(seconds)

    def render(self) -> bytes:
        self.flush_token_overheads()
        text = generate_latest(self.registry).decode()
        for name in self._counter_names:
            text = text.replace(f"{name}_total", name)
        return text.encode()
