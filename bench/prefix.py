"""The summary of bench/prefix.sh: TTFT per turn of the multi-turn runs side by side, issue 16's goals, and
the no-sharing throughput with the prefix cache on over off.

    python -m bench.prefix --multi-turn on.json off.json llama.json --no-sharing nosharing-*.json

Multi-turn levels are those with a `turn` (1..T, 0 for all turns), one column pair per target in the
order given. The goals: at --turn (default 5, else the last), the cache-off server's TTFT p50 over the
cache-on one's at least 5x, every other server's above 1x (slower than cache on). No-sharing levels pair
`<name>-on` with `<name>-off` by concurrency, each the mean over the rounds given; the goal is on / off of
at least 97%.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from statistics import fmean

from bench.combine import load_levels
from bench.stats import LevelStats

SPEEDUP_GOAL = 5.0  # cache off / cache on, TTFT p50 at the goal turn
THROUGHPUT_GOAL = 0.97  # no-sharing tokens/s, cache on / cache off


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}" if value >= 0.1 else f"{value * 1e3:.1f}"


def turn_table(levels: list[LevelStats]) -> str:
    """| turn | <target> p50 | <target> p99 | ...: TTFT in ms, a last row of each target's tokens/s."""
    targets = list(dict.fromkeys(s.target for s in levels if s.turn is not None))
    by_key = {(s.target, s.turn): s for s in levels if s.turn is not None}
    turns = sorted({s.turn for s in levels if s.turn}, key=int)
    lines = ["| turn | " + " | ".join(f"{t} TTFT p50 (ms) | {t} TTFT p99 (ms)" for t in targets) + " |",
             "|---|" + "---|---|" * len(targets)]
    for turn in turns:
        cells = []
        for target in targets:
            s = by_key.get((target, turn))
            cells += [_ms(s.ttft_s.get("p50")), _ms(s.ttft_s.get("p99"))] if s else ["-", "-"]
        lines.append(f"| {turn} | " + " | ".join(cells) + " |")
    throughput = []
    for target in targets:
        s = by_key.get((target, 0))
        throughput += [f"{s.output_tokens_per_s:.1f} tokens/s" if s else "-", ""]
    lines.append("| all | " + " | ".join(throughput) + " |")
    return "\n".join(lines)


def ttft_goals(levels: list[LevelStats], on: str, off: str, turn: int | None) -> list[str]:
    """One line per other target: its TTFT p50 at the goal turn over the cache-on target's."""
    p50 = {(s.target, s.turn): s.ttft_s.get("p50") for s in levels if s.turn}
    if turn is None:
        turn = 5 if (on, 5) in p50 else max((t for name, t in p50 if name == on), default=0)
    base = p50.get((on, turn))
    if not base:
        return [f"no turn {turn} TTFT for {on}"]
    lines = [f"turn {turn} TTFT p50: {on} {_ms(base)} ms"]
    for target in dict.fromkeys(name for name, _ in p50):
        value = p50.get((target, turn))
        if target == on or value is None:
            continue
        goal = SPEEDUP_GOAL if target == off else 1.0
        met = "met" if value / base >= goal else "NOT met"
        lines.append(f"- {target}: {_ms(value)} ms, {value / base:.1f}x {on}'s (goal: at least {goal:g}x, {met})")
    return lines


def throughput_pairs(levels: list[LevelStats]) -> list[str]:
    """no-sharing `<name>-on` over `<name>-off` tokens/s by concurrency, each the mean of its rounds."""
    rates: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for s in levels:
        if s.turn is None:
            for side in ("on", "off"):
                if s.target.endswith(f"-{side}"):
                    rates[s.target.removesuffix(f"-{side}"), side, s.concurrency].append(s.output_tokens_per_s)
    lines = ["| workload | streams | cache on tokens/s | cache off tokens/s | on / off | within 3% |",
             "|---|---|---|---|---|---|"]
    for (name, side, concurrency), on_rates in rates.items():
        off_rates = rates.get((name, "off", concurrency))
        if side != "on" or not off_rates:
            continue
        on_mean, off_mean = fmean(on_rates), fmean(off_rates)
        ratio = on_mean / off_mean if off_mean else 0.0
        lines.append(f"| {name} | {concurrency} | {on_mean:.1f} | {off_mean:.1f} | {ratio:.1%} | "
                     f"{'yes' if ratio >= THROUGHPUT_GOAL else 'NO'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multi-turn", nargs="*", default=[], metavar="RESULTS")
    parser.add_argument("--no-sharing", nargs="*", default=[], metavar="RESULTS")
    parser.add_argument("--on", default="tgi-py-cache-on", help="the multi-turn target with the cache on")
    parser.add_argument("--off", default="tgi-py-cache-off", help="the multi-turn target with the cache off")
    parser.add_argument("--turn", type=int, default=None, help="the turn of the TTFT goals (default: 5, or the last)")
    args = parser.parse_args()
    if args.multi_turn:
        levels = load_levels(args.multi_turn)
        print(turn_table(levels), "", *ttft_goals(levels, args.on, args.off, args.turn), sep="\n")
    if args.no_sharing:
        print("", *throughput_pairs(load_levels(args.no_sharing)), sep="\n")


if __name__ == "__main__":
    main()
