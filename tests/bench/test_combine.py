"""bench/combine.py: several tgi-bench result files -> one markdown table and one chart."""

from __future__ import annotations

import json
from pathlib import Path

from bench.combine import load_levels, markdown_table
from bench.stats import LevelStats


def level(target: str, concurrency: int, tokens_per_s: float) -> LevelStats:
    dist = {"mean": 0.05, "p50": 0.04, "p90": 0.06, "p99": 1.5, "min": 0.01, "max": 2.0, "count": 10}
    return LevelStats(target=target, concurrency=concurrency, requests=10, ok=9, errors={"http_429": 1},
                      duration_s=2.0, output_tokens=640, output_tokens_per_s=tokens_per_s, requests_per_s=4.5,
                      ttft_s=dist, itl_s=dist, tpot_s=dist, e2e_s=dist, tokens_per_request={"mean": 64.0},
                      prompt_tokens_mean=120.0, finish_reasons={"length": 9})


def test_levels_of_every_file_in_one_table_and_chart(tmp_path: Path) -> None:
    for name, tps in (("a", 12.5), ("b", 99.0)):
        document = {"levels": [level(name, 1, tps).as_dict(), level(name, 16, tps * 4).as_dict()]}
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
    levels = load_levels([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert [(s.target, s.concurrency) for s in levels] == [("a", 1), ("a", 16), ("b", 1), ("b", 16)]
    table = markdown_table(levels).splitlines()
    assert len(table) == 2 + 4
    # under 100 ms with one decimal, above as whole milliseconds
    assert table[2] == "| a | 1 | 12.5 | 4.50 | 40.0 | 1500 | 40.0 | 1500 | 64.0 | 1 |"
    from bench.chart import write_chart

    write_chart(tmp_path / "chart.png", levels)
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
