"""Flag parsing, env vars, defaults and early validation of `tgi-launch`, without starting anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from launcher import cli
from launcher.commands import LaunchPlan
from launcher.model_source import ModelSourceError, ResolvedModel


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    return tmp_path


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> list[LaunchPlan]:
    """Plans handed to `launch`; the model resolves to `model_dir` and nothing is spawned."""
    plans: list[LaunchPlan] = []

    def fake_resolve(model_id: str | None, revision: str | None = None) -> ResolvedModel:
        return ResolvedModel(path=model_dir, model_id=model_id or "HuggingFaceTB/SmolLM2-135M-Instruct")

    def fake_launch(plan: LaunchPlan) -> int:
        plans.append(plan)
        return 0

    monkeypatch.setattr(cli, "resolve_model", fake_resolve)
    monkeypatch.setattr(cli, "launch", fake_launch)
    return plans


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.main, args, env=env, catch_exceptions=False)


def flag_values(argv: list[str]) -> dict[str, str | None]:
    """--flag value pairs of a command line (flags without a value map to None)."""
    values: dict[str, str | None] = {}
    for index, item in enumerate(argv):
        if item.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else None
            values[item] = None if following is None or following.startswith("--") else following
    return values


def test_defaults(launched: list[LaunchPlan], model_dir: Path) -> None:
    result = invoke([])
    assert result.exit_code == 0, result.output
    (plan,) = launched

    (shard,) = plan.shards
    assert shard.argv == [
        sys.executable, "-m", "shard.cli",
        "--model-dir", str(model_dir),
        "--uds-path", "/tmp/text-generation-server",
        "--dtype", "float32",
        "--kv-cache-bytes", "2147483648",
        "--prefix-caching", "true",
    ]  # fmt: skip
    assert {key: shard.env[key] for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} == {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    assert (shard.env["MASTER_ADDR"], shard.env["MASTER_PORT"]) == ("localhost", "29500")
    assert plan.shard_sockets == [Path("/tmp/text-generation-server-0")]

    assert plan.router.argv[:3] == [sys.executable, "-m", "router.cli"]
    assert flag_values(list(plan.router.argv)) == {
        "--model-id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--tokenizer-dir": str(model_dir),
        "--shard-uds-path": "/tmp/text-generation-server",
        "--hostname": "127.0.0.1",
        "--port": "3000",
        "--max-concurrent-requests": "128",
        "--max-best-of": "2",
        "--max-stop-sequences": "4",
        "--max-top-n-tokens": "5",
        # min(max_position_embeddings=2048, 4096), one less for the input, +50 for prefill.
        "--max-input-tokens": "2047",
        "--max-total-tokens": "2048",
        "--waiting-served-ratio": "0.3",
        "--max-batch-prefill-tokens": "2097",
        "--max-waiting-tokens": "20",
        "--max-client-batch-size": "4",
        "--payload-limit": "2000000",
        "--sse-ping-interval": "10.0",
        "--graceful-termination-timeout": "90.0",
        "--liveness-timeout": "120.0",
        "--request-body-timeout": "30.0",
        "--keep-alive-timeout": "75.0",
        "--otlp-service-name": "tgi-py.router",
    }
    assert plan.router_health_url == "http://127.0.0.1:3000/health"
    assert plan.public_url == "http://127.0.0.1:3000"
    assert plan.grace_s == 90.0


def test_env_vars_and_flags(launched: list[LaunchPlan]) -> None:
    env = {
        "MODEL_ID": "org/model",
        "NUM_SHARD": "2",
        "DTYPE": "bfloat16",
        "TRUST_REMOTE_CODE": "true",
        "PORT": "8080",
        "HOSTNAME": "0.0.0.0",
        "MAX_TOTAL_TOKENS": "1000",
        "MAX_BATCH_SIZE": "8",
        "JSON_OUTPUT": "1",
        "KV_CACHE_BYTES": "1024",
        "MASTER_PORT": "29600",
    }
    # A flag beats its env var.
    result = invoke(["--port", "9090", "--shard-uds-path", "/tmp/x"], env=env)
    assert result.exit_code == 0, result.output
    (plan,) = launched

    assert [shard.env["RANK"] for shard in plan.shards] == ["0", "1"]
    assert {shard.env["WORLD_SIZE"] for shard in plan.shards} == {"2"}
    assert {shard.env["MASTER_PORT"] for shard in plan.shards} == {"29600"}
    shard_flags = flag_values(list(plan.shards[0].argv))
    assert shard_flags["--dtype"] == "bfloat16"
    assert shard_flags["--kv-cache-bytes"] == "1024"
    assert "--trust-remote-code" in shard_flags
    assert plan.shard_sockets == [Path("/tmp/x-0"), Path("/tmp/x-1")]

    router = flag_values(list(plan.router.argv))
    assert router["--model-id"] == "org/model"
    assert router["--port"] == "9090"
    assert router["--hostname"] == "0.0.0.0"
    assert (router["--max-input-tokens"], router["--max-total-tokens"]) == ("999", "1000")
    assert router["--max-batch-prefill-tokens"] == "1049"
    assert router["--max-batch-size"] == "8"
    assert "--json-output" in router and router["--json-output"] is None
    assert all("--json-output" in shard.argv for shard in plan.shards)  # one log format for every process
    # Wildcard binds are probed through loopback.
    assert plan.router_health_url == "http://127.0.0.1:9090/health"
    assert plan.json_output


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, "true"),
    (["--prefix-caching", "false"], {}, "false"),
    ([], {"PREFIX_CACHING": "0"}, "false"),
    ([], {"PREFIX_CACHING": "1"}, "true"),
    (["--prefix-caching", "true"], {"PREFIX_CACHING": "0"}, "true"),
])
def test_prefix_caching_flag_and_tgi_env_var_reach_every_shard(
    launched: list[LaunchPlan], args: list[str], env: dict[str, str], expected: str
) -> None:
    result = invoke([*args, "--num-shard", "2"], env=env)
    assert result.exit_code == 0, result.output
    (plan,) = launched
    assert [flag_values(list(shard.argv))["--prefix-caching"] for shard in plan.shards] == [expected, expected]


def test_input_limit_alone_raises_the_total(launched: list[LaunchPlan]) -> None:
    assert invoke(["--max-input-tokens", "3000"]).exit_code == 0
    router = flag_values(list(launched[0].router.argv))
    assert (router["--max-input-tokens"], router["--max-total-tokens"]) == ("3000", "3001")


def test_prefill_default_stays_within_batch_total(launched: list[LaunchPlan]) -> None:
    assert invoke(["--max-batch-total-tokens", "2048"]).exit_code == 0
    assert flag_values(list(launched[0].router.argv))["--max-batch-prefill-tokens"] == "2048"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-input-tokens", "10", "--max-total-tokens", "10"], "must be < --max-total-tokens"),
        (["--num-shard", "0"], "--num-shard"),
        (["--dtype", "int8"], "--dtype"),
        (["--port", "70000"], "--port"),
        (["--max-input-tokens", "100", "--max-batch-prefill-tokens", "50"], "must be >= --max-input-tokens"),
        (["--max-total-tokens", "100", "--max-batch-total-tokens", "50"], "must be <= --max-batch-total"),
        (["--hostname", ""], "--hostname"),
        (["--waiting-served-ratio", "-1"], "--waiting-served-ratio"),
    ],
)
def test_nonsense_is_rejected_before_resolving_the_model(
    monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    def must_not_resolve(*_: object, **__: object) -> ResolvedModel:
        raise AssertionError("model resolved before validation")

    monkeypatch.setattr(cli, "resolve_model", must_not_resolve)
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2
    assert message in result.output


def test_limits_derived_from_the_model_are_checked(launched: list[LaunchPlan]) -> None:
    # The model allows 2048 in total, but the batch budget is smaller than that.
    result = CliRunner().invoke(cli.main, ["--max-batch-total-tokens", "1000"])
    assert result.exit_code == 2
    assert "--max-total-tokens (2048) must be <= --max-batch-total-tokens (1000)" in result.output
    assert launched == []


def test_model_source_error_exits_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_: object, **__: object) -> ResolvedModel:
        raise ModelSourceError("model directory /x is missing: tokenizer.json")

    monkeypatch.setattr(cli, "resolve_model", failing)
    result = CliRunner().invoke(cli.main, ["--model-id", "/x"])
    assert result.exit_code == 1
    assert "missing: tokenizer.json" in result.output


def test_launch_exit_code_is_the_launchers(monkeypatch: pytest.MonkeyPatch, launched: list[LaunchPlan]) -> None:
    monkeypatch.setattr(cli, "launch", lambda plan: 3)
    assert CliRunner().invoke(cli.main, []).exit_code == 3
