"""Shard thread count from the CPUs the process may use: affinity mask, cgroup v2/v1 quota, local shards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shard.cpu_budget import CpuBudget, cgroup_cpu_quota, cpu_budget

TWO_CPUS = {0, 1}


class FakeCgroups:
    """A /proc/self/cgroup and a /sys/fs/cgroup tree under tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.proc = tmp_path / "proc-self-cgroup"
        self.root = tmp_path / "sys-fs-cgroup"
        self.root.mkdir()
        self.proc.write_text("0::/\n")

    def membership(self, text: str) -> None:
        self.proc.write_text(text)

    def write(self, relative: str, name: str, content: str) -> None:
        directory = self.root / relative
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(content + "\n")

    def budget(self, world_size: int = 1, threads_flag: int | None = None, *, affinity: set[int] = TWO_CPUS,
               environ: dict[str, str] | None = None) -> CpuBudget:
        return cpu_budget(world_size, threads_flag, environ=environ or {}, affinity=affinity, online_cpus=64,
                          proc_self_cgroup=self.proc, cgroup_root=self.root)


@pytest.fixture
def cg(tmp_path: Path) -> FakeCgroups:
    return FakeCgroups(tmp_path)


def test_no_cgroup_files_means_the_affinity_mask_decides(cg: FakeCgroups) -> None:
    budget = cg.budget(affinity={0, 1, 2, 3})
    assert budget.threads == 4
    assert budget.reason == "affinity 4 CPUs (of 64 online), cgroup quota none, 1 shard on this node"


def test_affinity_mask_of_one_cpu_gives_one_thread(cg: FakeCgroups) -> None:
    budget = cg.budget(affinity={5})
    assert budget == CpuBudget(1, "affinity 1 CPU (of 64 online), cgroup quota none, 1 shard on this node")


def test_affinity_defaults_to_the_real_mask(cg: FakeCgroups, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 7, 9})
    budget = cpu_budget(1, environ={}, proc_self_cgroup=cg.proc, cgroup_root=cg.root)
    assert budget.threads == 3
    assert budget.reason.startswith("affinity 3 CPUs")


def test_v2_max_is_no_limit(cg: FakeCgroups) -> None:
    cg.write("", "cpu.max", "max 100000")
    assert cgroup_cpu_quota(cg.proc, cg.root) is None
    assert cg.budget(affinity={0, 1, 2, 3}).threads == 4


def test_v2_fractional_quota_rounds_down(cg: FakeCgroups) -> None:
    cg.write("", "cpu.max", "150000 100000")
    quota = cgroup_cpu_quota(cg.proc, cg.root)
    assert quota is not None and quota.cpus == 1.5
    budget = cg.budget(affinity={0, 1, 2, 3})
    assert budget.threads == 1
    assert "cgroup quota 1.5 CPUs (cgroup v2 " in budget.reason
    assert str(cg.root / "cpu.max") in budget.reason


def test_v2_quota_below_one_cpu_still_gives_one_thread(cg: FakeCgroups) -> None:
    cg.write("", "cpu.max", "50000 100000")
    assert cg.budget(affinity={0, 1, 2, 3}).threads == 1


def test_v2_whole_quota_caps_a_wider_mask(cg: FakeCgroups) -> None:
    cg.write("", "cpu.max", "200000 100000")
    assert cg.budget(affinity=set(range(64))).threads == 2


def test_affinity_caps_a_wider_quota(cg: FakeCgroups) -> None:
    cg.write("", "cpu.max", "800000 100000")
    assert cg.budget(affinity={0, 1, 2}).threads == 3


def test_v2_limit_on_a_parent_cgroup_applies(cg: FakeCgroups) -> None:
    cg.membership("0::/kubepods/pod1/container\n")
    cg.write("kubepods/pod1/container", "cpu.max", "max 100000")
    cg.write("kubepods/pod1", "cpu.max", "200000 100000")
    cg.write("kubepods", "cpu.max", "max 100000")
    budget = cg.budget(affinity=set(range(8)))
    assert budget.threads == 2
    assert str(cg.root / "kubepods/pod1/cpu.max") in budget.reason


def test_v2_tightest_of_nested_limits_wins(cg: FakeCgroups) -> None:
    cg.membership("0::/a/b\n")
    cg.write("a/b", "cpu.max", "300000 100000")
    cg.write("a", "cpu.max", "600000 100000")
    quota = cgroup_cpu_quota(cg.proc, cg.root)
    assert quota is not None and quota.cpus == 3.0


def test_v2_path_missing_under_the_root_falls_back_to_the_root(cg: FakeCgroups) -> None:
    # No cgroup namespace: /proc/self/cgroup names the host's path, the mount is the container's cgroup.
    cg.membership("0::/system.slice/docker-abc.scope\n")
    cg.write("", "cpu.max", "200000 100000")
    assert cg.budget(affinity=set(range(8))).threads == 2


def test_v1_quota_minus_one_is_no_limit(cg: FakeCgroups) -> None:
    cg.membership("4:memory:/\n3:cpu,cpuacct:/\n0::/\n")
    cg.write("cpu,cpuacct", "cpu.cfs_quota_us", "-1")
    cg.write("cpu,cpuacct", "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_quota(cg.proc, cg.root) is None
    assert cg.budget(affinity={0, 1, 2, 3}).threads == 4


def test_v1_quota(cg: FakeCgroups) -> None:
    cg.membership("4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n0::/\n")
    cg.write("cpu,cpuacct/docker/x", "cpu.cfs_quota_us", "300000")
    cg.write("cpu,cpuacct/docker/x", "cpu.cfs_period_us", "100000")
    budget = cg.budget(affinity=set(range(16)))
    assert budget.threads == 3
    assert "cgroup quota 3 CPUs (cgroup v1 " in budget.reason


def test_v1_cpu_controller_mounted_alone(cg: FakeCgroups) -> None:
    # Separate hierarchies, as on this CI machine: "cpuacct" alone is not the cpu controller.
    cg.membership("2:cpuacct:/\n1:cpu:/\n0::/\n")
    cg.write("cpuacct", "cpu.cfs_quota_us", "100000")
    cg.write("cpuacct", "cpu.cfs_period_us", "100000")
    cg.write("cpu", "cpu.cfs_quota_us", "300000")
    cg.write("cpu", "cpu.cfs_period_us", "100000")
    assert cg.budget(affinity=set(range(16))).threads == 3


def test_v1_limit_on_a_parent_applies(cg: FakeCgroups) -> None:
    cg.membership("3:cpu,cpuacct:/kubepods/pod/c\n")
    cg.write("cpu,cpuacct/kubepods/pod/c", "cpu.cfs_quota_us", "-1")
    cg.write("cpu,cpuacct/kubepods/pod/c", "cpu.cfs_period_us", "100000")
    cg.write("cpu,cpuacct/kubepods/pod", "cpu.cfs_quota_us", "250000")
    cg.write("cpu,cpuacct/kubepods/pod", "cpu.cfs_period_us", "100000")
    assert cg.budget(affinity=set(range(16))).threads == 2


def test_unreadable_or_malformed_files_are_no_limit(cg: FakeCgroups, tmp_path: Path) -> None:
    cg.write("", "cpu.max", "garbage")
    assert cgroup_cpu_quota(cg.proc, cg.root) is None
    assert cgroup_cpu_quota(tmp_path / "absent", cg.root) is None


@pytest.mark.parametrize(("world_size", "local", "affinity", "expected"), [
    (2, None, 4, 2),  # the world is on this node
    (3, None, 4, 1),  # 4 // 3
    (4, None, 2, 1),  # never below 1
    (4, "2", 8, 4),  # two nodes of two shards: LOCAL_WORLD_SIZE, not the world, shares this node
])
def test_cpus_are_divided_among_the_shards_on_this_node(
    cg: FakeCgroups, world_size: int, local: str | None, affinity: int, expected: int
) -> None:
    environ = {"LOCAL_WORLD_SIZE": local} if local else {}
    budget = cg.budget(world_size, affinity=set(range(affinity)), environ=environ)
    assert budget.threads == expected
    shards = int(local or world_size)
    assert budget.reason.endswith(f"{shards} shards on this node")


def test_quota_is_divided_too(cg: FakeCgroups) -> None:
    cg.write("", "cpu.max", "300000 100000")
    assert cg.budget(2, affinity=set(range(8))).threads == 1  # 3 CPUs / 2 shards, rounded down


def test_omp_num_threads_overrides_the_computed_count(cg: FakeCgroups) -> None:
    budget = cg.budget(affinity={0}, environ={"OMP_NUM_THREADS": "6"})
    assert budget.threads == 6
    assert budget.reason.startswith("OMP_NUM_THREADS=6; the CPUs allow 1: affinity 1 CPU")


def test_omp_num_threads_nested_list_takes_its_first_level(cg: FakeCgroups) -> None:
    assert cg.budget(environ={"OMP_NUM_THREADS": "3,2"}).threads == 3


@pytest.mark.parametrize("value", ["0", "lots", ""])
def test_unusable_omp_num_threads_falls_back_to_the_computed_count(cg: FakeCgroups, value: str) -> None:
    budget = cg.budget(affinity={0, 1}, environ={"OMP_NUM_THREADS": value})
    assert budget.threads == 2
    assert ("ignored" in budget.reason) == bool(value)


def test_threads_flag_beats_omp_num_threads(cg: FakeCgroups) -> None:
    budget = cg.budget(threads_flag=5, affinity={0}, environ={"OMP_NUM_THREADS": "6"})
    assert budget.threads == 5
    assert budget.reason.startswith("--threads 5; the CPUs allow 1: ")


def test_threads_flag_must_be_positive(cg: FakeCgroups) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        cg.budget(threads_flag=0)


def test_shard_cli_parses_threads() -> None:
    from shard.cli import parse_args

    assert parse_args(["--model-dir", "/m"]).threads is None
    assert parse_args(["--model-dir", "/m", "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parse_args(["--model-dir", "/m", "--threads", "0"])


def test_this_machine_gives_a_sane_count() -> None:
    budget = cpu_budget(1, environ={})
    assert 1 <= budget.threads <= len(os.sched_getaffinity(0))
    assert budget.reason.startswith("affinity ")
