"""Supervision with stand-in children: startup failures, deaths while serving, timeouts, SIGKILL."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.processes import launch
from tests.launcher.helpers import fake_plan, fake_spec, recorded, wait_all_dead


def started_pids(record: Path) -> list[int]:
    return [pid for pid, event, _ in recorded(record) if event == "started"]


def test_shard_exiting_during_startup_stops_everything(
    uds_base: str, port: int, record: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    plan = fake_plan(uds_base, port, shard_options=[["--record", str(record)], []])
    # Rank 1 never becomes ready and dies with code 3 while rank 0 is up and waiting.
    dying = fake_spec("shard 1", "idle", None, "--exit-after", "0.5", "--code", "3", "--record", str(record))
    plan = replace(plan, shards=[plan.shards[0], dying])

    code = launch(plan)

    err = capfd.readouterr().err
    assert code == 3
    assert "shard 1 exited with code 3 while waiting" in err
    assert wait_all_dead(started_pids(record)) == []
    assert len(started_pids(record)) == 2
    assert not any(path.exists() for path in plan.shard_sockets)


def test_router_dying_while_serving_stops_the_shards(
    uds_base: str, port: int, record: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rec = ["--record", str(record)]
    plan = fake_plan(
        uds_base, port, shard_options=[rec, rec], router_options=[*rec, "--exit-after", "1.5", "--code", "5"]
    )

    code = launch(plan)

    out, err = capfd.readouterr()
    assert code == 5
    assert f"tgi-py listening on http://127.0.0.1:{port}\n" in out
    assert "router exited with code 5 while serving" in err
    shard_pids = started_pids(record)[:2]
    assert {pid for pid, event, _ in recorded(record) if event == "sigterm"} >= set(shard_pids)
    assert wait_all_dead(started_pids(record)) == []
    assert not any(path.exists() for path in plan.shard_sockets)


def test_shard_that_never_answers_times_out(
    uds_base: str, port: int, record: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    plan = fake_plan(uds_base, port, shard_options=[[]], shard_ready_timeout_s=1.0)
    plan = replace(plan, shards=[fake_spec("shard 0", "idle", None, "--record", str(record))])

    code = launch(plan)

    assert code == 1
    assert "shard 0 was not ready after 1 s" in capfd.readouterr().err
    assert wait_all_dead(started_pids(record)) == []


def test_child_ignoring_sigterm_is_killed_after_the_grace_period(
    uds_base: str, port: int, record: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rec = ["--record", str(record)]
    plan = fake_plan(
        uds_base,
        port,
        shard_options=[[*rec, "--exit-after", "2", "--code", "4"]],
        router_options=[*rec, "--ignore-term"],
        grace_s=0.5,
    )

    code = launch(plan)

    err = capfd.readouterr().err
    assert code == 4
    assert "shard 0 exited with code 4 while serving" in err
    assert "router ignored SIGTERM" in err
    assert wait_all_dead(started_pids(record)) == []


def test_stale_socket_is_replaced(uds_base: str, port: int, record: Path) -> None:
    rec = ["--record", str(record)]
    plan = fake_plan(uds_base, port, shard_options=[rec], router_options=[*rec, "--exit-after", "0.3"])
    # A socket file left by a crashed shard: bound once, nobody listening any more.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(plan.shard_sockets[0]))
    stale.close()

    # The router exiting with 0 while serving is still a failure, but only after full startup.
    assert launch(plan) == 1
    assert len(started_pids(record)) == 2


def test_regular_file_at_socket_path_is_not_deleted(
    uds_base: str, port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    plan = fake_plan(uds_base, port, shard_options=[[]])
    plan.shard_sockets[0].write_text("precious")

    assert launch(plan) == 1
    assert "is not a socket" in capfd.readouterr().err
    assert plan.shard_sockets[0].read_text() == "precious"


def test_socket_in_use_by_another_server_is_refused(
    uds_base: str, port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    plan = fake_plan(uds_base, port, shard_options=[[]])
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(plan.shard_sockets[0]))
        # The listen backlog accepts the launcher's probe connection without an accept() call.
        live.listen()
        assert launch(plan) == 1
    assert "already serving" in capfd.readouterr().err
