"""Building blocks for supervision tests: fake child specs, short socket paths, liveness checks."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common.sockets import shard_socket_path
from launcher.commands import ChildSpec, LaunchPlan
from launcher.readiness import health_url, public_url

ROOT = Path(__file__).resolve().parents[2]
FAKE_CHILD = Path(__file__).resolve().parent / "fakes" / "fake_child.py"
RUN_PLAN = Path(__file__).resolve().parent / "fakes" / "run_plan.py"
# Fake children run as scripts, so the project root is not on their path by default.
CHILD_ENV = {"PYTHONPATH": str(ROOT)}


def fake_spec(name: str, role: str, address: str | None, *options: str) -> ChildSpec:
    argv = [sys.executable, str(FAKE_CHILD), role, *([address] if address else []), *options]
    return ChildSpec(name=name, argv=argv, env=CHILD_ENV)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_plan(
    uds_base: str,
    port: int,
    shard_options: Sequence[Sequence[str]],
    router_options: Sequence[str] = (),
    router_role: str = "router",
    **timing: float,
) -> LaunchPlan:
    """Shards 0..n-1 with the given extra options each, and a fake router on `port`."""
    sockets = [shard_socket_path(uds_base, rank) for rank in range(len(shard_options))]
    shards = [
        fake_spec(f"shard {rank}", "shard", str(path), *options)
        for rank, (path, options) in enumerate(zip(sockets, shard_options, strict=True))
    ]
    router = fake_spec("router", router_role, str(port), *router_options)
    return LaunchPlan(
        shards=shards,
        shard_sockets=sockets,
        router=router,
        router_health_url=health_url("127.0.0.1", port),
        public_url=public_url("127.0.0.1", port),
        shard_ready_timeout_s=timing.get("shard_ready_timeout_s", 30.0),
        router_ready_timeout_s=timing.get("router_ready_timeout_s", 30.0),
        grace_s=timing.get("grace_s", 2.0),
    )


def recorded(record: Path) -> list[tuple[int, str, float | None]]:
    """(pid, event, time) lines a fake child appended to its --record file."""
    events = []
    for line in record.read_text().splitlines() if record.exists() else []:
        parts = line.split()
        events.append((int(parts[0]), parts[1], float(parts[2]) if len(parts) > 2 else None))
    return events


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_all_dead(pids: Sequence[int], timeout_s: float = 10.0) -> list[int]:
    """Pids still alive after `timeout_s` (empty when all are gone)."""
    deadline = time.monotonic() + timeout_s
    alive = [pid for pid in pids if is_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if is_alive(pid)]
    return alive
