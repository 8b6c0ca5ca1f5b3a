"""How many of its threads a shard's next decode step runs on: the count that has been fastest lately.

A decode step is one OpenMP region with a barrier after every operation (~270 per SmolLM2 step). When
another process takes one of the CPUs, the thread that loses its CPU holds every barrier until the
scheduler gives it a slice back, and the whole team waits with it. Fewer threads than the budget may
then go faster: beside one busy process on 2 CPUs, one thread has a CPU to itself where two share
three ways. More rows per step change the answer again (more work to split). No fixed count is right
on a quiet machine and on a shared one, so the governor measures.

Steps of the same shape (the same number of rows) are timed under the count they ran with. While a
count is in use its time is an exponentially weighted mean; a count tried after a while out of use
starts again from its new sample (it says more about the machine now than samples from before a
neighbour came or went). The step runs on the count with the lowest time for its shape.

Now and then one step tries another count (one fewer or one more, in turn). A trial that changes
nothing doubles the wait before the next one (from `explore_every` up to `max_explore_every` steps of
that shape), so a quiet machine pays for watching less and less; a trial that changes the choice, or
the current count slowing down by `slowdown` over its time at the last choice (a neighbour arrived),
brings the next trial back to `explore_every` steps away.

Pure logic, no torch: the one-call step (shard/models/layers_in_one_call.py) runs its OpenMP region on
the chosen count and reports its time. Its kernels give every output to one thread whatever the count,
so the count changes the speed, never the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShapeTimings:
    """What the governor knows of one shape (a step's row count)."""

    means_ns: dict[int, float] = field(default_factory=dict)
    last_step: dict[int, int] = field(default_factory=dict)  # the step each count last ran
    steps: int = 0
    interval: int = 0
    next_trial: int = 0
    reference_ns: float = 0.0  # the chosen count's time when it was chosen


@dataclass
class ThreadGovernor:
    max_threads: int
    explore_every: int = 16
    max_explore_every: int = 256
    weight: float = 0.25  # of the newest sample in a count's mean
    slowdown: float = 1.3
    current: int = 0
    _shapes: dict[int, ShapeTimings] = field(default_factory=dict)
    _trial_down: bool = False

    def __post_init__(self) -> None:
        if self.max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, not {self.max_threads}")
        self.current = self.current or self.max_threads

    def choose(self, rows: int) -> int:
        """The thread count for the next step of `rows` rows."""
        shape = self._shapes.get(rows)
        if self.max_threads == 1 or shape is None or not shape.means_ns:
            return self.current
        if shape.steps >= shape.next_trial:
            return self._neighbour(self._best(shape))
        return self._best(shape)

    def observe(self, rows: int, threads: int, elapsed_ns: int) -> None:
        """A step of `rows` rows took `elapsed_ns` on `threads` threads."""
        if self.max_threads == 1:
            return
        shape = self._shapes.setdefault(rows, ShapeTimings(interval=self.explore_every,
                                                           next_trial=self.explore_every))
        before = self._best(shape) if shape.means_ns else None
        trial = before is not None and threads != before
        if threads in shape.means_ns and shape.steps - shape.last_step[threads] <= 1:
            shape.means_ns[threads] += self.weight * (elapsed_ns - shape.means_ns[threads])
        else:
            shape.means_ns[threads] = float(elapsed_ns)
        shape.last_step[threads] = shape.steps
        shape.steps += 1
        best = self._best(shape)
        if trial:
            changed = best != before
            shape.interval = self.explore_every if changed else min(2 * shape.interval, self.max_explore_every)
            shape.next_trial = shape.steps + shape.interval
            shape.reference_ns = shape.means_ns[best]
        elif before is None:
            shape.reference_ns = shape.means_ns[best]
        elif shape.means_ns[best] > self.slowdown * shape.reference_ns and shape.interval > self.explore_every:
            # The chosen count got slower: something changed on the machine; look again soon.
            shape.interval = self.explore_every
            shape.next_trial = min(shape.next_trial, shape.steps + self.explore_every)
            shape.reference_ns = shape.means_ns[best]
        self.current = best

    @staticmethod
    def _best(shape: ShapeTimings) -> int:
        return min(shape.means_ns, key=shape.means_ns.__getitem__)

    def _neighbour(self, count: int) -> int:
        """One fewer or one more than `count`, alternating, within [1, max_threads]."""
        self._trial_down = not self._trial_down
        candidates = (count - 1, count + 1) if self._trial_down else (count + 1, count - 1)
        for n in candidates:
            if 1 <= n <= self.max_threads:
                return n
        return count
