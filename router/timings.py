"""Where one request's time went: computed once when it succeeds, for the metrics, the log line and the
`x-*-time` headers of a non-streaming answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

from router.queue import Entry
from router.types import ValidRequest


@dataclass(frozen=True)
class RequestTimings:
    """Seconds, from validation to the last token."""

    validation: float
    queue: float  # queued until its prefill was sent
    inference: float  # prefill sent until the last token
    generated_tokens: int

    @classmethod
    def measure(cls, valid: ValidRequest, entry: Entry, generated_tokens: int) -> RequestTimings:
        now = time.monotonic()
        batched = entry.batched_at or now
        return cls(valid.validation_seconds, batched - entry.queued_at, now - batched, generated_tokens)

    @property
    def total(self) -> float:
        return self.validation + self.queue + self.inference

    @property
    def time_per_token(self) -> float:
        return self.inference / max(self.generated_tokens, 1)

    def log_fields(self) -> dict[str, float]:
        """Milliseconds, for the structured log line."""
        return {"validation_ms": round(self.validation * 1e3, 3), "queue_ms": round(self.queue * 1e3, 3),
                "inference_ms": round(self.inference * 1e3, 3),
                "time_per_token_ms": round(self.time_per_token * 1e3, 3)}

    def headers(self, input_length: int) -> dict[str, str]:
        """TGI's timing headers of a non-streaming answer (whole milliseconds, but x-compute-time)."""
        return {
            "x-compute-type": "cpu", "x-compute-time": f"{self.total:.6f}", "x-total-time": str(int(self.total * 1000)),
            "x-validation-time": str(int(self.validation * 1000)), "x-queue-time": str(int(self.queue * 1000)),
            "x-inference-time": str(int(self.inference * 1000)),
            "x-time-per-token": str(int(self.time_per_token * 1000)),
            "x-prompt-tokens": str(input_length), "x-generated-tokens": str(self.generated_tokens),
        }
