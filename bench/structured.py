"""The summary of bench/structured.sh: throughput and TTFT of free text, one JSON schema, and a schema new
to the server in every request, at the same concurrency, each the median over the rounds run.

    python -m bench.structured free-*.json schema-*.json fresh-*.json

Levels are grouped by target name (free, schema, fresh). Issue 17's goals: the schema's tokens/s at least
90% of free text's, and the fresh schema's TTFT p99 at most 50 ms above the same schema's once the server
has seen it (the compile cost), and above free text's.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from statistics import median

from bench.combine import load_levels

THROUGHPUT_GOAL = 0.90
FRESH_TTFT_GOAL_S = 0.050


def summarize(paths: list[str]) -> str:
    by_target: dict[str, list] = defaultdict(list)
    for level in load_levels(paths):
        if level.target != "warmup":
            by_target[level.target].append(level)
    rows = ["| run | rounds | requests | errors | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) |",
            "|---|---|---|---|---|---|---|---|"]
    mean: dict[str, dict[str, float]] = {}
    for target, levels in by_target.items():
        mean[target] = {
            "tps": median(s.output_tokens_per_s for s in levels),
            "p50": median(s.ttft_s["p50"] or 0.0 for s in levels),
            "p99": median(s.ttft_s["p99"] or 0.0 for s in levels),
            "itl": median(s.itl_s["p50"] or 0.0 for s in levels),
        }
        m = mean[target]
        rows.append(f"| {target} (c={levels[0].concurrency}) | {len(levels)} | {sum(s.requests for s in levels)} | "
                    f"{sum(sum(s.errors.values()) for s in levels)} | {m['tps']:.1f} | {m['p50'] * 1e3:.0f} | "
                    f"{m['p99'] * 1e3:.0f} | {m['itl'] * 1e3:.1f} |")
    lines = rows + [""]
    free = mean.get("free")
    if free and "schema" in mean:
        ratio = mean["schema"]["tps"] / free["tps"]
        verdict = "met" if ratio >= THROUGHPUT_GOAL else "NOT met"
        lines.append(f"schema / free tokens/s: {ratio:.1%} (goal >= {THROUGHPUT_GOAL:.0%}: {verdict})")
    for base in ("schema", "free"):
        if base in mean and "fresh" in mean:
            delta = mean["fresh"]["p99"] - mean[base]["p99"]
            verdict = "met" if delta <= FRESH_TTFT_GOAL_S else "NOT met"
            lines.append(f"fresh schema TTFT p99 - {base}: {delta * 1e3:+.0f} ms "
                         f"(goal <= +{FRESH_TTFT_GOAL_S * 1e3:.0f} ms: {verdict})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="tgi-bench --output files of the free, schema and fresh runs")
    print(summarize(parser.parse_args(argv).results))


if __name__ == "__main__":
    main()
