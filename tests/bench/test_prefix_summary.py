"""bench/prefix.py: the multi-turn runs' TTFT per turn side by side, issue 16's goals, and the no-sharing
throughput with the prefix cache on over off."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.combine import load_levels
from bench.prefix import throughput_pairs, ttft_goals, turn_table
from bench.stats import LevelStats
from tests.bench.test_combine import level


def turn_level(target: str, turn: int, p50: float, tokens_per_s: float = 10.0) -> LevelStats:
    s = level(target, 4, tokens_per_s)
    return dataclasses.replace(s, turn=turn, ttft_s={**s.ttft_s, "p50": p50, "p99": p50 * 2})


def test_ttft_by_turn_and_the_goals(tmp_path: Path) -> None:
    runs = {"tgi-py-cache-on": [0.2, 0.1, 0.12, 0.14, 0.15], "tgi-py-cache-off": [0.9, 1.0, 1.1, 1.2, 1.3],
            "llama-server": [0.3, 0.1, 0.12, 0.13, 0.14]}
    paths = []
    for name, ttfts in runs.items():
        levels = [turn_level(name, t, v) for t, v in enumerate(ttfts, start=1)] + [turn_level(name, 0, 0.5, 42.0)]
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"levels": [s.as_dict() for s in levels]}))
    levels = load_levels([str(p) for p in paths])  # `turn` survives the JSON
    assert [s.turn for s in levels[:6]] == [1, 2, 3, 4, 5, 0]

    table = turn_table(levels).splitlines()
    assert table[0].startswith("| turn | tgi-py-cache-on TTFT p50 (ms) | tgi-py-cache-on TTFT p99 (ms) |")
    assert table[2] == "| 1 | 200 | 400 | 900 | 1800 | 300 | 600 |"
    assert table[6] == "| 5 | 150 | 300 | 1300 | 2600 | 140 | 280 |"
    assert table[7].startswith("| all | 42.0 tokens/s |")

    goals = ttft_goals(levels, "tgi-py-cache-on", "tgi-py-cache-off", None)
    assert goals[0] == "turn 5 TTFT p50: tgi-py-cache-on 150 ms"
    assert goals[1] == "- tgi-py-cache-off: 1300 ms, 8.7x tgi-py-cache-on's (goal: at least 5x, met)"
    assert goals[2] == "- llama-server: 140 ms, 0.9x tgi-py-cache-on's (goal: at least 1x, NOT met)"
    assert ttft_goals(levels, "tgi-py-cache-on", "tgi-py-cache-off", 2)[1].endswith("10.0x tgi-py-cache-on's "
                                                                                  "(goal: at least 5x, met)")
    assert ttft_goals(levels, "absent", "tgi-py-cache-off", None) == ["no turn 0 TTFT for absent"]


def test_no_sharing_throughput_is_the_mean_of_rounds_on_over_off() -> None:
    levels = [level("nosharing-on", 1, 100.0), level("nosharing-off", 1, 101.0), level("nosharing-on", 1, 98.0),
              level("nosharing-off", 1, 99.0), level("nosharing-on", 8, 300.0), level("nosharing-off", 8, 320.0),
              level("lonely-on", 1, 5.0), turn_level("x-on", 1, 0.1)]
    lines = throughput_pairs(levels)
    assert lines[2:] == ["| nosharing | 1 | 99.0 | 100.0 | 99.0% | yes |",
                         "| nosharing | 8 | 300.0 | 320.0 | 93.8% | NO |"]
