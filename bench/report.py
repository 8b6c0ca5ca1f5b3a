"""The results: machine description, the table printed at the end, and the JSON file."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

from bench import __version__
from bench.apis import Target
from bench.stats import LevelStats

SCHEMA_VERSION = 1

ITL_NOTE = (
    "ITL samples are the gaps between consecutive token-carrying stream events of a request, each "
    "divided by the number of tokens that event carried (TGI: always 1; OpenAI: from logprobs when "
    "present, else the usage total spread evenly over the events after the first), pooled over all "
    "successful requests of the level. TPOT is per request: (last token time - first token time) / "
    "(output tokens - 1). TTFT is from just before the request is sent to the first event that "
    "carries a token. Throughput is output tokens of successful requests / level wall time (first "
    "request sent to last request finished)."
)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": usable,
        "memory_bytes": _memory_bytes(),
    }


MULTI_TURN_NOTE = (
    "Multi-turn scenario: levels with `turn` 1..T aggregate the requests of that turn of every conversation "
    "(throughput over that turn's own span, its first request sent to its last answer ended); `turn` 0 is "
    "every turn together over the whole run. Each turn's prompt is the whole history so far (a shared system "
    "prompt, earlier user messages and the server's own answers) plus a new user message."
)


def results_document(args: dict[str, Any], targets: list[Target], levels: list[LevelStats],
                     started: _dt.datetime, finished: _dt.datetime,
                     scenario: dict[str, Any] | None = None) -> dict[str, Any]:
    notes = {"itl": ITL_NOTE}
    if scenario is not None:
        notes["multi_turn"] = MULTI_TURN_NOTE
    document = {
        "tool": "tgi-bench",
        "version": __version__,
        "schema_version": SCHEMA_VERSION,
        "date": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": args,
        "targets": [t.describe() for t in targets],
        "levels": [level.as_dict() for level in levels],
        "notes": notes,
    }
    if scenario is not None:
        document["scenario"] = scenario
    return document


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = ("target", "conc", "ok", "fail", "tok/s", "req/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99",
           "TPOT p50", "tok/req")
# multi-turn runs: which turn a row aggregates (0: all), and the prompt length the server reported
TURN_COLUMNS = ("turn", "prompt tok")


def _turn_cells(s: LevelStats) -> tuple[str, ...]:
    return ("all" if not s.turn else str(s.turn), _num(s.prompt_tokens_mean, 0))


def format_table(levels: list[LevelStats]) -> str:
    """A plain-text table, latencies in milliseconds, plus one line per level that had errors."""
    turns = any(s.turn is not None for s in levels)
    columns = COLUMNS[:2] + TURN_COLUMNS + COLUMNS[2:] if turns else COLUMNS
    rows = [columns]
    for s in levels:
        rows.append((s.target, str(s.concurrency), *(_turn_cells(s) if turns else ()), str(s.ok),
                     str(s.requests - s.ok), _num(s.output_tokens_per_s), _num(s.requests_per_s, 2),
                     _ms(s.ttft_s["p50"]), _ms(s.ttft_s["p99"]), _ms(s.itl_s["p50"]), _ms(s.itl_s["p99"]),
                     _ms(s.tpot_s["p50"]), _num(s.tokens_per_request["mean"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("latencies in ms; tok/s = output tokens of successful requests / level wall time")
    if turns:
        lines.append("multi-turn: conc = conversations; a turn's tok/s is over that turn's own span, all = the run")
    for s in levels:
        if s.errors and s.turn != 0:  # a multi-turn run's errors are on the rows of their turns
            summary = ", ".join(f"{k}: {v}" for k, v in s.errors.items())
            where = f" turn {s.turn}" if s.turn else ""
            lines.append(f"errors {s.target} c={s.concurrency}{where}: {summary}")
    return "\n".join(lines)
