"""Shard threads come from the CPUs the process may use: `taskset -c 0 tgi-launch` runs 1 thread, and its
greedy output is the same as with 2 threads."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import LaunchedServer, launch

THREADS = re.compile(r"rank 0: (\d+) threads? \((.*)\)")
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
ARGS = ("--max-input-tokens", "64", "--max-total-tokens", "128")


def greedy(server: LaunchedServer) -> list[str]:
    texts = []
    for prompt in PROMPTS:
        response = server.post("/generate", {"inputs": prompt,
                                             "parameters": {"do_sample": False, "max_new_tokens": 20}})
        assert response.status_code == 200, response.text
        texts.append(response.json()["generated_text"])
    return texts


def threads_logged(server: LaunchedServer) -> tuple[int, str]:
    found = [m for line in server.output if (m := THREADS.search(line))]
    assert len(found) == 1, server.log()
    return int(found[0].group(1)), found[0].group(2)


@pytest.fixture(scope="module")
def runs(tiny_llama: Path) -> Iterator[dict[str, tuple[int, str, list[str]]]]:
    """(threads, reason, greedy texts) of a server pinned to CPU 0 and of one with 2 threads, one at a time."""
    assert len(os.sched_getaffinity(0)) >= 2, (
        f"this test compares 1 thread with 2 and needs 2 usable CPUs; the test process may use "
        f"{sorted(os.sched_getaffinity(0))}")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OMP_NUM_THREADS", raising=False)  # it would override what the affinity mask gives
        results = {}
        for label, prefix, extra in (("pinned", ("taskset", "-c", "0"), ()), ("two", (), ("--threads", "2"))):
            server = launch(tiny_llama, *ARGS, *extra, prefix=prefix)
            try:
                results[label] = (*threads_logged(server), greedy(server))
            finally:
                assert server.stop() == 0, server.log()
    yield results


def test_a_server_pinned_to_one_cpu_runs_one_thread(runs: dict[str, tuple[int, str, list[str]]]) -> None:
    threads, reason, _ = runs["pinned"]
    assert threads == 1, reason
    assert reason.startswith("affinity 1 CPU (of "), reason
    assert reason.endswith("1 shard on this node"), reason


def test_the_threads_flag_sets_the_count(runs: dict[str, tuple[int, str, list[str]]]) -> None:
    threads, reason, _ = runs["two"]
    assert threads == 2, reason
    assert reason.startswith("--threads 2; the CPUs allow "), reason


def test_greedy_output_does_not_depend_on_the_thread_count(runs: dict[str, tuple[int, str, list[str]]]) -> None:
    pinned, two = runs["pinned"][2], runs["two"][2]
    assert all(text for text in pinned), pinned
    assert pinned == two
