"""One table and one chart from several tgi-bench result files (one per server, run one after another).

    python -m bench.combine results/*.json --chart chart.png > table.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from bench.stats import LevelStats


def load_levels(paths: list[str]) -> list[LevelStats]:
    names = {f.name for f in dataclasses.fields(LevelStats)}
    levels = []
    for path in paths:
        with open(path) as handle:
            document = json.load(handle)
        levels += [LevelStats(**{k: v for k, v in level.items() if k in names}) for level in document["levels"]]
    return levels


def markdown_table(levels: list[LevelStats]) -> str:
    def ms(distribution: dict, key: str) -> str:
        value = distribution.get(key)
        return "-" if value is None else f"{value * 1e3:.0f}" if value >= 0.1 else f"{value * 1e3:.1f}"

    lines = ["| target | C | tokens/s | req/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) "
             "| tokens/req | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in levels:
        per_request = s.tokens_per_request.get("mean")
        lines.append(
            f"| {s.target} | {s.concurrency} | {s.output_tokens_per_s:.1f} | {s.requests_per_s:.2f} | "
            f"{ms(s.ttft_s, 'p50')} | {ms(s.ttft_s, 'p99')} | {ms(s.itl_s, 'p50')} | {ms(s.itl_s, 'p99')} | "
            f"{'-' if per_request is None else f'{per_request:.1f}'} | {sum(s.errors.values())} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+")
    parser.add_argument("--chart")
    args = parser.parse_args()
    levels = load_levels(args.results)
    print(markdown_table(levels))
    if args.chart:
        from bench.chart import write_chart

        write_chart(args.chart, levels)


if __name__ == "__main__":
    main()
