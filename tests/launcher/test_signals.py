"""A real launcher process (with stand-in children) under SIGTERM, SIGINT and SIGKILL."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.commands import LaunchPlan
from tests.launcher.helpers import CHILD_ENV, RUN_PLAN, fake_plan, recorded, wait_all_dead


def _plan_json(plan: LaunchPlan) -> str:
    def spec(child):  # type: ignore[no-untyped-def]
        return {"name": child.name, "argv": list(child.argv), "env": dict(child.env)}

    return json.dumps(
        {
            "shards": [spec(child) for child in plan.shards],
            "shard_sockets": [str(path) for path in plan.shard_sockets],
            "router": spec(plan.router),
            "router_health_url": plan.router_health_url,
            "public_url": plan.public_url,
            "shard_ready_timeout_s": plan.shard_ready_timeout_s,
            "router_ready_timeout_s": plan.router_ready_timeout_s,
            "grace_s": plan.grace_s,
        }
    )


def _wait_for_line(process: subprocess.Popen[str], prefix: str, timeout_s: float = 30.0) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            line = process.stdout.readline()
            if line.startswith(prefix):
                return line
            if not line:
                break
    raise AssertionError(f"no line starting with {prefix!r}; launcher exit code {process.poll()}")


@pytest.fixture
def serving(uds_base: str, port: int, record: Path) -> Iterator[tuple[subprocess.Popen[str], LaunchPlan]]:
    """A launcher process that has started two fake shards and a fake router and is serving."""
    rec = ["--record", str(record)]
    plan = fake_plan(uds_base, port, shard_options=[rec, rec], router_options=rec)
    process = subprocess.Popen(
        [sys.executable, str(RUN_PLAN), _plan_json(plan)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **CHILD_ENV},
    )
    try:
        line = _wait_for_line(process, "tgi-py listening on")
        assert line == f"tgi-py listening on http://127.0.0.1:{port}\n"
        yield process, plan
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_stops_router_then_shards_and_exits_zero(
    serving: tuple[subprocess.Popen[str], LaunchPlan], record: Path, sig: signal.Signals
) -> None:
    process, plan = serving
    with urllib.request.urlopen(plan.router_health_url, timeout=5) as response:
        assert response.status == 200

    process.send_signal(sig)

    assert process.wait(timeout=30) == 0
    events = recorded(record)
    pids = [pid for pid, event, _ in events if event == "started"]
    assert len(pids) == 3
    router_pid = pids[-1]
    term_times = {pid: at for pid, event, at in events if event == "sigterm"}
    assert set(term_times) == set(pids)
    assert all(term_times[router_pid] < term_times[pid] for pid in pids[:2])
    assert wait_all_dead(pids) == []
    assert not any(path.exists() for path in plan.shard_sockets)


def test_sigkilled_launcher_leaves_no_orphans(serving: tuple[subprocess.Popen[str], LaunchPlan], record: Path) -> None:
    process, _ = serving
    process.kill()
    process.wait(timeout=10)
    pids = [pid for pid, event, _ in recorded(record) if event == "started"]
    assert len(pids) == 3
    # PR_SET_PDEATHSIG delivers SIGTERM to every child once the launcher is gone.
    assert wait_all_dead(pids) == []
