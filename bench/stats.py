"""Per-request records and their aggregation into per-level statistics (pure Python, no I/O)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class RequestResult:
    """What one request measured. Times are seconds from `time.perf_counter()` (monotonic)."""

    start: float
    end: float = 0.0
    # perf_counter() of every event that carried at least one generated token, in arrival order
    token_times: list[float] = field(default_factory=list)
    # tokens carried by each of those events: None where the event does not say (OpenAI text chunks)
    token_counts: list[int | None] = field(default_factory=list)
    # authoritative total when the server reports one (OpenAI `usage.completion_tokens`, TGI
    # `details.generated_tokens`); otherwise the count of token events is used
    reported_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    # None on success; otherwise a short key such as "http_429", "stream_error:overloaded",
    # "incomplete_stream" or an exception class name ("TimeoutError", "ClientConnectorError")
    error: str | None = None
    error_detail: str | None = None
    # times the request was sent again because its pooled connection had been closed by the server
    reconnects: int = 0
    # the generated text as the stream carried it (the multi-turn scenario sends it back as the assistant's)
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        """Generated tokens: the server's own count when it gave one, else what the events carried."""
        if self.reported_tokens is not None:
            return self.reported_tokens
        return sum(1 if c is None else c for c in self.token_counts)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    def per_event_tokens(self) -> list[float]:
        """Tokens attributed to each token event.

        Events that state their count keep it. When some events do not (OpenAI chunks carry text, not
        tokens) and the server reported a total, the first event is taken to hold 1 token (prefill
        yields one) and the remaining unstated tokens are shared evenly by the remaining unstated
        events; without a total every unstated event counts as 1 token.
        """
        counts = self.token_counts
        unknown = [i for i, c in enumerate(counts) if c is None]
        out: list[float] = [float(c) if c is not None else 1.0 for c in counts]
        if not unknown or self.reported_tokens is None:
            return out
        remaining = self.reported_tokens - sum(c for c in counts if c is not None)
        if unknown[0] == 0 and len(unknown) > 1:
            out[0] = 1.0
            remaining -= 1
            unknown = unknown[1:]
        # never attribute less than one token to an event that carried text
        share = max(remaining / len(unknown), 1.0)
        for i in unknown:
            out[i] = share
        return out

    def itl_samples(self) -> list[float]:
        """Inter-token latencies: the gap before each token event after the first, divided by the
        number of tokens that event carried (so a chunk of 4 tokens after 40 ms gives 10 ms)."""
        per_event = self.per_event_tokens()
        samples = []
        for i in range(1, len(self.token_times)):
            gap = self.token_times[i] - self.token_times[i - 1]
            samples.append(gap / per_event[i] if per_event[i] > 0 else gap)
        return samples

    def record(self, origin: float) -> dict:
        """This request as a JSON-able row, times in seconds relative to `origin`."""
        return {
            "start_s": self.start - origin,
            "ttft_s": self.ttft,
            "e2e_s": self.e2e,
            "output_tokens": self.output_tokens,
            "token_events": len(self.token_times),
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "error_detail": self.error_detail,
            "reconnects": self.reconnects,
        }

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first: (last token - first token) / (tokens - 1).
        Independent of how the server groups tokens into events."""
        n = self.output_tokens
        if len(self.token_times) < 1 or n < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (n - 1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default).
    None for an empty sequence."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """Summary of a sample in seconds: mean, p50, p90, p99, min, max and the sample count."""
    return {
        "mean": mean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": float(min(values)) if values else None,
        "max": float(max(values)) if values else None,
        "count": len(values),
    }


@dataclass
class LevelStats:
    """Aggregate of one (target, concurrency) level."""

    target: str
    concurrency: int
    requests: int
    ok: int
    errors: dict[str, int]
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_s: dict[str, float | None]
    itl_s: dict[str, float | None]
    tpot_s: dict[str, float | None]
    e2e_s: dict[str, float | None]
    tokens_per_request: dict[str, float | None]
    prompt_tokens_mean: float | None
    finish_reasons: dict[str, int]
    # successful requests that produced fewer tokens than asked for (EOS or a stop): None when the
    # requested length was not given
    short_requests: int | None = None
    # requests sent again on a new connection (a pooled one had been closed by the server)
    reconnects: int = 0
    # one row per request (`RequestResult.record`), only with --save-requests
    request_records: list[dict] | None = None
    # the multi-turn scenario: the turn (1..T) whose requests this aggregates, 0 for all turns together
    turn: int | None = None

    def as_dict(self) -> dict:
        out = {
            "target": self.target,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.requests - self.ok,
            "errors": dict(self.errors),
            "duration_s": self.duration_s,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": self.output_tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "ttft_s": self.ttft_s,
            "itl_s": self.itl_s,
            "tpot_s": self.tpot_s,
            "e2e_s": self.e2e_s,
            "tokens_per_request": self.tokens_per_request,
            "prompt_tokens_mean": self.prompt_tokens_mean,
            "finish_reasons": dict(self.finish_reasons),
            "short_requests": self.short_requests,
            "reconnects": self.reconnects,
        }
        if self.turn is not None:
            out["turn"] = self.turn
        if self.request_records is not None:
            out["request_records"] = self.request_records
        return out


def aggregate(target: str, concurrency: int, results: Iterable[RequestResult],
              wall_start: float | None = None, wall_end: float | None = None,
              expected_tokens: int | None = None) -> LevelStats:
    """Combine the measured requests of one level.

    Throughput is output tokens of *successful* requests over the level's wall time (first request
    sent to last request ended, unless given). ITL samples are pooled over all successful requests;
    TTFT, TPOT and end-to-end latency are one sample per successful request.
    """
    results = list(results)
    good = [r for r in results if r.ok]
    if wall_start is None:
        wall_start = min((r.start for r in results), default=0.0)
    if wall_end is None:
        wall_end = max((r.end for r in results), default=wall_start)
    duration = max(wall_end - wall_start, 0.0)
    tokens = sum(r.output_tokens for r in good)
    ttfts = [t for r in good if (t := r.ttft) is not None]
    itls = [s for r in good for s in r.itl_samples()]
    tpots = [t for r in good if (t := r.tpot) is not None]
    prompts = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    per_request = [float(r.output_tokens) for r in good]
    errors = Counter(r.error for r in results if r.error is not None)
    finishes = Counter(r.finish_reason or "unknown" for r in good)
    return LevelStats(
        target=target,
        concurrency=concurrency,
        requests=len(results),
        ok=len(good),
        errors=dict(sorted(errors.items())),
        duration_s=duration,
        output_tokens=tokens,
        output_tokens_per_s=tokens / duration if duration > 0 else 0.0,
        requests_per_s=len(good) / duration if duration > 0 else 0.0,
        ttft_s=distribution(ttfts),
        itl_s=distribution(itls),
        tpot_s=distribution(tpots),
        e2e_s=distribution([r.e2e for r in good]),
        tokens_per_request={"mean": mean(per_request),
                            "min": min(per_request) if per_request else None,
                            "max": max(per_request) if per_request else None},
        prompt_tokens_mean=mean(prompts),
        finish_reasons=dict(sorted(finishes.items())),
        short_requests=(sum(r.output_tokens < expected_tokens for r in good)
                        if expected_tokens is not None else None),
        reconnects=sum(r.reconnects for r in results),
    )
