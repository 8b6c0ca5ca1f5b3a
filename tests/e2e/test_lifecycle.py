"""The launcher's process lifecycle on a real tgi-launch: clean stops and a shard that dies."""

from __future__ import annotations

import glob
import os
import signal
from pathlib import Path

from tests.e2e.procs import children_of, cmdline, wait_gone
from tests.e2e.server import launch
from tests.e2e.sse import stream_then


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
    events, ended_after = stream_then(server.url + "/generate_stream", body,
                                      lambda: os.kill(shard, signal.SIGKILL))
    assert events[-1].get("error_type") == "generation", events[-3:]
    assert ended_after < 10, ended_after
    assert server.process.wait(timeout=60) != 0
    assert "shard" in server.log().lower()
    assert wait_gone(children) == []
