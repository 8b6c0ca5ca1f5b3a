"""bench/contention.py: quiet and busy levels of each server paired into kept-speed ratios."""

from __future__ import annotations

from bench.contention import markdown, pair_levels
from tests.bench.test_combine import level


def test_quiet_and_busy_levels_pair_by_server_and_concurrency() -> None:
    levels = [level("tgi-py-quiet", 1, 80.0), level("tgi-py-quiet", 8, 300.0), level("tgi-py-busy", 1, 36.0),
              level("tgi-py-busy", 8, 165.0), level("llama-server-quiet", 1, 90.0),
              level("llama-server-busy", 1, 1.0), level("lonely-quiet", 1, 5.0)]
    kept = pair_levels(levels)
    assert [(k.server, k.concurrency, round(k.ratio, 3)) for k in kept] == [
        ("tgi-py", 1, 0.45), ("tgi-py", 8, 0.55), ("llama-server", 1, 0.011)]
    table = markdown(kept).splitlines()
    assert table[2] == "| tgi-py | 1 | 80.0 | 36.0 | 45% | 40.0 | 40.0 |"
    assert len(table) == 2 + 3
