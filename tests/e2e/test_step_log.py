"""The shard's per-step log line: batch size, step and forward time, and the weight bandwidth they imply."""

from __future__ import annotations

import re
import time

from tests.e2e.server import LaunchedServer

STEP = re.compile(r"(?:prefill|decode) batch=(\d+) step=([\d.]+)ms forward=([\d.]+)ms weights=([\d.]+)GB/s")
LOADED = re.compile(r"loaded \w+: ([\d.]+) MB of weights")


def test_the_shard_logs_its_steps_with_the_weight_bandwidth_of_their_forward(server: LaunchedServer) -> None:
    # At most one step line (prefill or decode) goes to INFO every 5 s: keep generating until one does.
    deadline = time.monotonic() + 30
    steps: list[re.Match] = []
    while not steps and time.monotonic() < deadline:
        server.post("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 8}})
        steps = [m for line in server.output if (m := STEP.search(line))]
        time.sleep(0.5)
    assert steps, server.log()
    loaded_mb = float(next(m for line in server.output if (m := LOADED.search(line))).group(1))
    batch, step_ms, forward_ms, weights_gbs = steps[-1].groups()
    assert int(batch) >= 1
    assert 0 < float(forward_ms) <= float(step_ms)
    # bytes of weights read by one forward / its time; MB per ms is GB/s. Every figure is printed to 0.1,
    # so the check allows each its rounding.
    forward = float(forward_ms)
    lowest = (loaded_mb - 0.05) / (forward + 0.05) - 0.05
    highest = (loaded_mb + 0.05) / max(forward - 0.05, 1e-3) + 0.05
    assert lowest <= float(weights_gbs) <= highest, (loaded_mb, forward_ms, weights_gbs)
