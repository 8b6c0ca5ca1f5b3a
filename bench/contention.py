"""Busy-over-quiet ratios from bench/contention.sh's result files: how much of its quiet speed each
server keeps beside a busy neighbour.

    python -m bench.contention results/tgi-py-quiet.json results/tgi-py-busy.json ...

Targets are paired by name: `<server>-quiet` with `<server>-busy`, level by level (concurrency).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.combine import load_levels
from bench.stats import LevelStats


@dataclass(frozen=True)
class Kept:
    server: str
    concurrency: int
    quiet_tokens_per_s: float
    busy_tokens_per_s: float
    quiet_itl_p50_s: float | None
    busy_itl_p50_s: float | None

    @property
    def ratio(self) -> float:
        return self.busy_tokens_per_s / self.quiet_tokens_per_s if self.quiet_tokens_per_s else 0.0


def pair_levels(levels: list[LevelStats]) -> list[Kept]:
    quiet = {(s.target.removesuffix("-quiet"), s.concurrency): s for s in levels if s.target.endswith("-quiet")}
    busy = {(s.target.removesuffix("-busy"), s.concurrency): s for s in levels if s.target.endswith("-busy")}
    return [Kept(server, c, q.output_tokens_per_s, busy[server, c].output_tokens_per_s, q.itl_s.get("p50"),
                 busy[server, c].itl_s.get("p50"))
            for (server, c), q in quiet.items() if (server, c) in busy]


def markdown(kept: list[Kept]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.1f}"

    lines = ["| server | streams | quiet tokens/s | busy tokens/s | kept | quiet ITL p50 (ms) | busy ITL p50 (ms) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {k.server} | {k.concurrency} | {k.quiet_tokens_per_s:.1f} | {k.busy_tokens_per_s:.1f} | "
              f"{k.ratio:.0%} | {ms(k.quiet_itl_p50_s)} | {ms(k.busy_itl_p50_s)} |" for k in kept]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+")
    print(markdown(pair_levels(load_levels(parser.parse_args().results))))


if __name__ == "__main__":
    main()
