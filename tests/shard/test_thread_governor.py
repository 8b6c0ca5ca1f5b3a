"""ThreadGovernor on a simulated machine: the thread count follows neighbours as they come and go."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from shard.thread_governor import ThreadGovernor

# ms per step by thread count: quiet, 2 threads win; one busy neighbour on 2 CPUs, 1 thread wins.
QUIET = {1: 17.0, 2: 11.0}
BUSY = {1: 19.0, 2: 60.0}


def run(governor: ThreadGovernor, steps: int, machine: dict[int, float], rows: int = 1,
        noise: Callable[[], float] = lambda: 1.0) -> list[int]:
    chosen = []
    for _ in range(steps):
        threads = governor.choose(rows)
        chosen.append(threads)
        governor.observe(rows, threads, int(machine[threads] * noise() * 1e6))
    return chosen


def test_a_quiet_machine_keeps_every_thread_and_tries_one_less_ever_more_rarely() -> None:
    governor = ThreadGovernor(max_threads=2, explore_every=16, max_explore_every=256)
    chosen = run(governor, 4000, QUIET)
    assert chosen[0] == 2
    trials = [i for i, n in enumerate(chosen) if n == 1]
    assert trials[:3] == [16, 49, 114]  # the wait doubles after each trial that changes nothing
    assert len(trials) <= 4000 // 256 + 6  # then one step in 256


def test_a_busy_neighbour_moves_the_step_to_one_thread_and_back_when_it_leaves() -> None:
    rng = random.Random(0)

    def noise() -> float:
        return rng.uniform(0.8, 1.25)

    governor = ThreadGovernor(max_threads=2)
    run(governor, 500, QUIET, noise=noise)
    busy = run(governor, 500, BUSY, noise=noise)
    assert busy[-400:].count(1) / 400 >= 0.9, "beside a busy process one thread should win"
    quiet_again = run(governor, 500, QUIET, noise=noise)
    assert quiet_again[-300:].count(2) / 300 >= 0.9, "once it leaves, both threads again"


def test_each_shape_learns_its_own_best_count() -> None:
    governor = ThreadGovernor(max_threads=4, explore_every=8)
    small = {1: 5.0, 2: 4.0, 3: 6.0, 4: 7.0}  # few rows: little work to split
    large = {1: 40.0, 2: 22.0, 3: 16.0, 4: 12.0}
    for _ in range(400):
        run(governor, 1, small, rows=1)
        run(governor, 1, large, rows=32)
    assert governor.choose(1) in (2, 3) and governor.choose(32) in (3, 4)
    late_small = run(governor, 200, small, rows=1)
    late_large = run(governor, 200, large, rows=32)
    assert late_small.count(2) >= 150 and late_large.count(4) >= 150


def test_a_neighbour_arriving_is_noticed_soon_even_after_a_long_quiet_spell() -> None:
    governor = ThreadGovernor(max_threads=2, explore_every=16, max_explore_every=256)
    run(governor, 3000, QUIET)
    busy = run(governor, 200, BUSY)
    # the 2-thread step slowed past `slowdown` x its time: a trial comes within explore_every steps
    assert busy.index(1) <= 2 * 16
    assert busy[-100:].count(1) >= 90


def test_one_thread_budget_never_explores() -> None:
    governor = ThreadGovernor(max_threads=1)
    assert set(run(governor, 100, {1: 10.0})) == {1}
    with pytest.raises(ValueError):
        ThreadGovernor(max_threads=0)
