"""Bounded admission: a request either gets a slot at once or is refused with 429 overloaded."""

from __future__ import annotations


class Admission:
    def __init__(self, max_concurrent_requests: int) -> None:
        self.limit = max_concurrent_requests
        self.in_flight = 0

    def try_acquire(self) -> bool:
        # Single-threaded asyncio: no lock needed between the check and the increment.
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("admission released more often than acquired")
        self.in_flight -= 1

    @property
    def available(self) -> int:
        """Free slots now (a request may still find none by the time it is validated)."""
        return self.limit - self.in_flight
