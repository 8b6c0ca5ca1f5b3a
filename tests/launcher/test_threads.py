"""`tgi-launch --threads` reaches every shard; each shard learns how many shards share its machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import cli
from launcher.commands import LaunchPlan, plan_launch
from launcher.model_source import ResolvedModel


def plan(**overrides: object) -> LaunchPlan:
    settings: dict = dict(model_dir=Path("/m"), model_id="m", num_shard=2, dtype="float32", trust_remote_code=False,
                          kv_cache_bytes=1, uds_path="/tmp/s", master_addr="localhost", master_port=29500,
                          hostname="127.0.0.1", port=3000, router_flags=[])
    return plan_launch(**{**settings, **overrides})


def threads_flag(argv: list[str] | tuple[str, ...]) -> str | None:
    argv = list(argv)
    return argv[argv.index("--threads") + 1] if "--threads" in argv else None


def test_threads_unset_leaves_the_shard_to_compute_them() -> None:
    assert all(threads_flag(shard.argv) is None for shard in plan().shards)


def test_threads_reach_every_shard() -> None:
    assert [threads_flag(shard.argv) for shard in plan(threads=3).shards] == ["3", "3"]


@pytest.mark.parametrize(("num_shard", "nnodes", "local"), [(1, 1, "1"), (2, 1, "2"), (4, 2, "2")])
def test_local_world_size_is_the_shards_on_this_node(num_shard: int, nnodes: int, local: str) -> None:
    shards = plan(num_shard=num_shard, nnodes=nnodes).shards
    assert [shard.env["LOCAL_WORLD_SIZE"] for shard in shards] == [local] * int(local)


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[LaunchPlan]:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    plans: list[LaunchPlan] = []
    monkeypatch.setattr(cli, "resolve_model", lambda model_id, revision=None: ResolvedModel(tmp_path, "m"))
    monkeypatch.setattr(cli, "launch", lambda p: plans.append(p) or 0)
    return plans


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, None),
    (["--threads", "2"], {}, "2"),
    ([], {"THREADS": "5"}, "5"),
])
def test_launcher_threads_flag_and_env_var(
    launched: list[LaunchPlan], args: list[str], env: dict[str, str], expected: str | None
) -> None:
    result = CliRunner().invoke(cli.main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (shard,) = launched[0].shards
    assert threads_flag(shard.argv) == expected


def test_launcher_rejects_zero_threads(launched: list[LaunchPlan]) -> None:
    result = CliRunner().invoke(cli.main, ["--threads", "0"])
    assert result.exit_code != 0
    assert "--threads" in result.output
    assert not launched


def test_shards_spin_briefly_at_openmp_barriers_unless_the_user_chose() -> None:
    from launcher.commands import GOMP_SPINCOUNT, openmp_env

    assert openmp_env({}) == {"GOMP_SPINCOUNT": GOMP_SPINCOUNT}
    assert openmp_env({"GOMP_SPINCOUNT": "300000"}) == {}  # the user's own value is inherited as is
    assert openmp_env({"OMP_WAIT_POLICY": "active"}) == {}
