"""A PNG of throughput, TTFT and ITL against concurrency, one line per target (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from bench.stats import LevelStats


def write_chart(path: str | Path, levels: list[LevelStats], title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    by_target: dict[str, list[LevelStats]] = {}
    for level in levels:
        by_target.setdefault(level.target, []).append(level)
    concurrencies = sorted({level.concurrency for level in levels})

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [
        (axes[0], "output tokens/s", lambda s: (s.output_tokens_per_s, None)),
        (axes[1], "TTFT (ms): p50, p99 dashed", lambda s: _pair(s.ttft_s)),
        (axes[2], "ITL (ms): p50, p99 dashed", lambda s: _pair(s.itl_s)),
    ]
    for axis, label, pick in panels:
        for index, (target, rows) in enumerate(by_target.items()):
            rows = sorted(rows, key=lambda s: s.concurrency)
            color = f"C{index % 10}"
            xs = [s.concurrency for s in rows]
            main = [pick(s)[0] for s in rows]
            axis.plot(xs, [float("nan") if v is None else v for v in main], marker="o", color=color,
                      label=target)
            tail = [pick(s)[1] for s in rows]
            if any(v is not None for v in tail):
                axis.plot(xs, [float("nan") if v is None else v for v in tail], marker=".", linestyle="--",
                          color=color, alpha=0.7)
        axis.set_xlabel("concurrency (closed loop)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        if len(concurrencies) > 1 and concurrencies[0] > 0:
            axis.set_xscale("log", base=2)
            axis.xaxis.set_major_locator(FixedLocator(concurrencies))
            axis.xaxis.set_minor_locator(NullLocator())
            axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_ylim(bottom=0)
    axes[0].legend(loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _pair(distribution: dict) -> tuple[float | None, float | None]:
    p50, p99 = distribution.get("p50"), distribution.get("p99")
    return (None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)
