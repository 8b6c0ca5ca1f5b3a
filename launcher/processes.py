"""Spawn the shards and the router, wait until each is ready, watch them, and stop them in order.

Each child gets its own session so that a terminal Ctrl-C reaches only the launcher, which then stops
the router before the shards. Children also get SIGTERM from the kernel if the launcher itself dies
(PR_SET_PDEATHSIG), so a SIGKILLed launcher leaves no orphans.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType

from launcher.commands import ChildSpec, LaunchPlan
from launcher.readiness import router_is_healthy, shard_is_healthy, socket_is_served

_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    """Startup or serving failed; `exit_code` is what the launcher should exit with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _StopRequested(Exception):
    pass


def die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before fork: the child should only make the call, not load libraries.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        # The parent may have died between fork and prctl, in which case no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Runs one LaunchPlan to completion; `run` returns the launcher's exit code."""

    def __init__(self, plan: LaunchPlan) -> None:
        self.plan = plan
        self._shards: list[tuple[ChildSpec, subprocess.Popen[bytes]]] = []
        self._router: tuple[ChildSpec, subprocess.Popen[bytes]] | None = None
        self._stop_signal: int | None = None

    def log(self, message: str, level: str = "INFO") -> None:
        if self.plan.json_output:
            stamp = datetime.now(UTC).isoformat()
            line = json.dumps({"timestamp": stamp, "level": level, "target": "launcher", "message": message})
        else:
            line = f"tgi-py launcher: {message}"
        print(line, file=sys.stderr, flush=True)

    def run(self) -> int:
        # SIGHUP (a closed terminal) gets the same orderly stop as Ctrl-C rather than an abrupt death.
        stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in stop_signals}
        try:
            self._start_and_serve()
        except _StopRequested:
            self.log(f"received {signal.Signals(self._stop_signal or signal.SIGTERM).name}, shutting down")
            return 0
        except LaunchError as err:
            self.log(str(err), level="ERROR")
            return err.exit_code
        finally:
            # Signals stay caught while stopping so a second Ctrl-C cannot abandon half-stopped children.
            self._stop_all()
            self._remove_sockets()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1  # unreachable: serving only ends through an exception

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum

    def _start_and_serve(self) -> None:
        self._prepare_sockets()
        for spec in self.plan.shards:
            # All ranks start together: they meet in one process group before any answers Health.
            self._shards.append((spec, self._spawn(spec)))
        for (spec, _), path in zip(self._shards, self.plan.shard_sockets, strict=True):
            self._wait_until(lambda p=path: shard_is_healthy(p), self.plan.shard_ready_timeout_s, spec.name)
            self.log(f"{spec.name} is ready on {path}")
        if self.plan.router is None:  # a worker node of a multi-node group: shards only
            print(f"tgi-py worker node: {len(self._shards)} shard(s) serving", flush=True)
        else:
            self._router = (self.plan.router, self._spawn(self.plan.router))
            url = self.plan.router_health_url
            self._wait_until(lambda: router_is_healthy(url), self.plan.router_ready_timeout_s, "router")
            print(f"tgi-py listening on {self.plan.public_url}", flush=True)
        while True:
            self._check_children("while serving")
            time.sleep(_POLL_S)

    def _spawn(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        self.log(f"starting {spec.name}: {' '.join(spec.argv)}")
        try:
            return subprocess.Popen(
                list(spec.argv),
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as err:
            raise LaunchError(f"cannot start {spec.name} ({spec.argv[0]}): {err}") from err

    def _children(self) -> list[tuple[ChildSpec, subprocess.Popen[bytes]]]:
        return self._shards + ([self._router] if self._router else [])

    def _check_children(self, phase: str) -> None:
        if self._stop_signal is not None:
            raise _StopRequested()
        for spec, process in self._children():
            code = process.poll()
            if code is not None:
                raise LaunchError(
                    f"{spec.name} {describe_exit(code)} {phase}; stopping the other processes",
                    exit_code=code if code > 0 else 1,
                )

    def _wait_until(self, ready: Callable[[], bool], timeout_s: float, name: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_children(f"while waiting for {name} to start")
            if ready():
                return
            if time.monotonic() >= deadline:
                raise LaunchError(f"{name} was not ready after {timeout_s:g} s; giving up")
            time.sleep(_POLL_S)

    def _prepare_sockets(self) -> None:
        for path in self.plan.shard_sockets:
            if not os.path.lexists(path):
                continue
            if not path.is_socket():
                raise LaunchError(f"{path} exists and is not a socket; refusing to replace it")
            if socket_is_served(path):
                raise LaunchError(f"another process is already serving on {path}; pick another --shard-uds-path")
            path.unlink()

    def _remove_sockets(self) -> None:
        for path in self.plan.shard_sockets:
            if path.is_socket():
                path.unlink(missing_ok=True)

    def _stop_all(self) -> None:
        # Router first so that no new work reaches shards that are going away. It drains in-flight
        # streams for up to the graceful termination timeout, then needs a moment to end the rest.
        if self._router is not None:
            self._stop_group([self._router], self.plan.grace_s + ROUTER_EXIT_MARGIN_S)
        self._stop_group(self._shards, self.plan.grace_s)

    def _stop_group(self, children: Sequence[tuple[ChildSpec, subprocess.Popen[bytes]]], grace_s: float) -> None:
        for _, process in children:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for spec, process in children:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{spec.name} ignored SIGTERM for {grace_s:g} s; killing it", "WARN")
            # Reaches helpers the child started in its session even when the child itself is gone.
            _signal_group(process, signal.SIGKILL)
            process.wait()


ROUTER_EXIT_MARGIN_S = 10.0


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # Each child leads its own process group (start_new_session), so its group id is its pid.
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def launch(plan: LaunchPlan) -> int:
    """Start everything in `plan`, serve until a child dies or a signal arrives; the exit code."""
    return Supervisor(plan).run()
