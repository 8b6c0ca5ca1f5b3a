"""Integer arithmetic written once."""

from __future__ import annotations


def ceil_div(numerator: int, denominator: int) -> int:
    """The smallest integer >= numerator / denominator, e.g. the KV blocks that hold `tokens` tokens."""
    return -(-numerator // denominator)
