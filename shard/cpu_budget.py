"""How many CPU threads a shard runs: the CPUs this process may use, shared by the shards on its machine.

`os.cpu_count()` counts the machine's CPUs. A process may use fewer: its affinity mask (`taskset`,
Kubernetes' static CPU manager) names the CPUs it may run on, and a cgroup CPU quota (Kubernetes
`limits.cpu`, `docker --cpus`) caps the CPU time it may take per period. A decode step is one OpenMP
region with many barriers, so a thread that is not running holds up all the others: more threads than
usable CPUs turn every barrier into a wait for a whole scheduler slice.

Precedence: an explicit `--threads N`, then `OMP_NUM_THREADS`, then
`floor(min(affinity CPUs, quota CPUs) / shards on this node)`, never below 1.

A fractional quota rounds down (1.5 CPUs gives 1 thread): the quota is CPU time for the whole group per
period, so 2 threads on 1.5 CPUs spend it in three quarters of each period and are then all throttled
for the rest, in the middle of a step. A thread count at or under the quota is never throttled.

Standard library only; every source (affinity, /proc, /sys) can be passed in, for tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where cgroup v1 mounts the cpu controller, under the cgroup root, by distribution.
V1_CPU_MOUNTS = ("cpu,cpuacct", "cpuacct,cpu", "cpu")


@dataclass(frozen=True)
class CpuBudget:
    """The thread count a shard runs with, and why (for the start-up log)."""

    threads: int
    reason: str


@dataclass(frozen=True)
class CpuQuota:
    """A cgroup CPU quota: `cpus` CPUs' worth of time per period, set in the cgroup at `source`."""

    cpus: float
    source: str


def _ancestors(root: Path, cgroup_path: str) -> list[Path]:
    """root/<cgroup_path> and each of its parents up to root itself: a parent's limit applies too.

    Inside a container with its own cgroup namespace the path is "/" and root is the container's
    cgroup; without one the path names the host's hierarchy, which may not exist under root, and then
    only the directories that do exist are read."""
    path = PurePosixPath("/") / cgroup_path
    return [root / str(p).lstrip("/") for p in (path, *path.parents)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(directory: Path) -> CpuQuota | None:
    """cgroup v2 `cpu.max`: "<quota> <period>" in microseconds, or "max <period>" for no limit."""
    text = _read(directory / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return CpuQuota(quota / period, f"cgroup v2 {directory / 'cpu.max'}")


def _v1_quota(directory: Path) -> CpuQuota | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; a quota of -1 is no limit."""
    quota_text, period_text = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return CpuQuota(quota / period, f"cgroup v1 {directory / 'cpu.cfs_quota_us'}")


def cgroup_cpu_quota(proc_self_cgroup: Path = PROC_SELF_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> CpuQuota | None:
    """The tightest CPU quota on this process's cgroup or any ancestor, v2 or v1; None when there is none."""
    lines = _read(proc_self_cgroup)
    if lines is None:
        return None
    quotas: list[CpuQuota] = []
    for line in lines.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, cgroup_path = rest.partition(":")
        if not cgroup_path:
            continue
        if hierarchy == "0" and controllers == "":  # v2: "0::/path", files under the root itself
            quotas += filter(None, map(_v2_quota, _ancestors(cgroup_root, cgroup_path)))
        elif "cpu" in controllers.split(","):  # v1: "N:cpu,cpuacct:/path"
            for mount in V1_CPU_MOUNTS:
                if (cgroup_root / mount).is_dir():
                    quotas += filter(None, map(_v1_quota, _ancestors(cgroup_root / mount, cgroup_path)))
                    break
    return min(quotas, key=lambda q: q.cpus, default=None)


def _positive_int(text: str | None) -> int | None:
    """A thread count from an override; OMP_NUM_THREADS may be a nested list ("4,2"): its first level."""
    if text is None:
        return None
    try:
        value = int(text.split(",")[0].strip())
    except ValueError:
        return None
    return value if value >= 1 else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def computed_budget(
    world_size: int,
    *,
    environ: Mapping[str, str] | None = None,
    affinity: Iterable[int] | None = None,
    online_cpus: int | None = None,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    cgroup_root: Path = CGROUP_ROOT,
) -> CpuBudget:
    """floor(min(affinity CPUs, quota CPUs) / shards on this node), at least 1, with its reason.

    The shards on this node are LOCAL_WORLD_SIZE when set (the launcher sets it; multi-node groups run
    a share of the world on each node), else `world_size`."""
    env = os.environ if environ is None else environ
    online = os.cpu_count() if online_cpus is None else online_cpus
    if affinity is None and hasattr(os, "sched_getaffinity"):  # Linux; elsewhere every online CPU
        affinity = os.sched_getaffinity(0)
    allowed = len(set(affinity)) if affinity is not None else (online or 1)
    quota = cgroup_cpu_quota(proc_self_cgroup, cgroup_root)
    local_shards = _positive_int(env.get("LOCAL_WORLD_SIZE")) or max(1, world_size)
    usable = float(allowed) if quota is None else min(float(allowed), quota.cpus)
    threads = max(1, math.floor(usable / local_shards))
    of_online = f" (of {online} online)" if online else ""
    quota_text = "none" if quota is None else f"{quota.cpus:g} CPUs ({quota.source})"
    reason = (f"affinity {_plural(allowed, 'CPU')}{of_online}, cgroup quota {quota_text}, "
              f"{_plural(local_shards, 'shard')} on this node")
    return CpuBudget(threads, reason)


def cpu_budget(
    world_size: int,
    threads_flag: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    affinity: Iterable[int] | None = None,
    online_cpus: int | None = None,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    cgroup_root: Path = CGROUP_ROOT,
) -> CpuBudget:
    """The shard's thread count: `--threads`, else OMP_NUM_THREADS, else what its CPUs allow."""
    env = os.environ if environ is None else environ
    computed = computed_budget(world_size, environ=env, affinity=affinity, online_cpus=online_cpus,
                               proc_self_cgroup=proc_self_cgroup, cgroup_root=cgroup_root)
    allows = f"the CPUs allow {computed.threads}: {computed.reason}"
    if threads_flag is not None:
        if threads_flag < 1:
            raise ValueError(f"--threads must be at least 1, not {threads_flag}")
        return CpuBudget(threads_flag, f"--threads {threads_flag}; {allows}")
    omp = env.get("OMP_NUM_THREADS")
    if omp is not None and omp.strip():
        value = _positive_int(omp)
        if value is not None:
            return CpuBudget(value, f"OMP_NUM_THREADS={omp}; {allows}")
        return CpuBudget(computed.threads, f"{computed.reason} (OMP_NUM_THREADS={omp!r} is not a count: ignored)")
    return computed
