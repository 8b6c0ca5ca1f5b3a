"""Tensor parallelism over two "nodes": two tgi-launch processes that meet through MASTER_ADDR.

Both run on this machine (loopback), as two pods of a LeaderWorkerSet would on two: node 1's shard
answers the router over TCP, the ranks all-reduce over gloo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.e2e.server import free_port, launch
from tests.e2e.test_generate import reference_ids


def test_two_nodes_give_the_same_greedy_ids_as_one(tiny_llama: Path) -> None:
    master_port, shard_port = free_port(), free_port()
    worker_uds = os.path.join(tempfile.mkdtemp(prefix="tgi"), "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "launcher", "--model-id", str(tiny_llama), "--num-shard", "2", "--nnodes", "2",
         "--node-rank", "1", "--master-addr", "127.0.0.1", "--master-port", str(master_port),
         "--shard-uds-path", worker_uds, "--shard-port", str(shard_port), "--shard-advertise-host", "127.0.0.1",
         "--max-input-tokens", "64", "--max-total-tokens", "256", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        leader = launch(tiny_llama, "--num-shard", "2", "--nnodes", "2", "--node-rank", "0", "--master-addr",
                        "127.0.0.1", "--max-input-tokens", "64", "--max-total-tokens", "256",
                        "--threads", "1", master_port=master_port)
        try:
            for prompt in ("Hello world", "東京は日本の"):
                response = leader.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 12,
                                                                                      "details": True}})
                assert response.status_code == 200, response.text
                assert [t["id"] for t in response.json()["details"]["tokens"]] == reference_ids(tiny_llama, prompt,
                                                                                               12)
            assert "rank 1/2 loaded" not in leader.log()  # rank 1 lives on the worker node
        finally:
            assert leader.stop() == 0, leader.log()
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=60)
    assert "rank 1/2 loaded" in output, output[-2000:]
    assert worker.returncode == 0, output[-2000:]
