"""The launcher's process lifecycle on a real tgi-launch: clean stops and a shard that dies."""

from __future__ import annotations

import glob
import json
import os
import signal
import time
from pathlib import Path

import requests

from tests.e2e.procs import children_of, cmdline, wait_gone
from tests.e2e.server import launch


def test_sigterm_and_sigint_stop_every_process_and_remove_sockets(tiny_llama: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = launch(tiny_llama, "--max-input-tokens", "64", "--max-total-tokens", "256")
        children = children_of(server.process.pid)
        commands = [cmdline(p) for p in children]
        assert any("shard.cli" in c for c in commands) and any("router.cli" in c for c in commands), commands
        assert glob.glob(server.uds_path + "-*")
        server.process.send_signal(sig)
        assert server.process.wait(timeout=60) == 0, server.log()
        assert wait_gone(children) == []
        assert glob.glob(server.uds_path + "-*") == []


def test_killed_shard_ends_the_stream_with_an_error_and_the_launcher_exits_nonzero(tiny_llama: Path) -> None:
    server = launch(tiny_llama, "--max-input-tokens", "64", "--max-total-tokens", "2048")
    children = children_of(server.process.pid)
    shard = next(p for p in children if "shard.cli" in cmdline(p))
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 1900}}
    events: list[dict] = []
    with requests.post(server.url + "/generate_stream", json=body, stream=True, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for raw in lines:
            if raw.startswith(b"data:"):
                events.append(json.loads(raw[5:]))
                break
        os.kill(shard, signal.SIGKILL)
        killed_at = time.monotonic()
        for raw in lines:
            if raw.startswith(b"data:"):
                events.append(json.loads(raw[5:]))
        ended_after = time.monotonic() - killed_at
    assert events[-1].get("error_type") == "generation", events[-3:]
    assert ended_after < 10, ended_after
    assert server.process.wait(timeout=60) != 0
    assert "shard" in server.log().lower()
    assert wait_gone(children) == []
