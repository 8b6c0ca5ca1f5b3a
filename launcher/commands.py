"""What the launcher runs: the command lines of the shards, the router and the GGUF conversion, and the plan.

The supervision itself (spawning, readiness, stopping) lives in launcher/processes.py; keeping the
plan a plain value lets tests swap in stand-in children without touching the supervision logic.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.sockets import shard_socket_path
from launcher.readiness import health_url, public_url

DEFAULT_READY_TIMEOUT_S = 600.0
DEFAULT_GRACE_S = 10.0


@dataclass(frozen=True)
class ChildSpec:
    """One process to start: a name for messages, its argv, and variables added to our environment."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchPlan:
    shards: Sequence[ChildSpec]
    # shard_sockets[r] is where shards[r] answers gRPC Health once its model is loaded.
    shard_sockets: Sequence[Path]
    router: ChildSpec | None  # None on the worker nodes of a multi-node group
    router_health_url: str
    public_url: str
    shard_ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    router_ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    grace_s: float = DEFAULT_GRACE_S
    json_output: bool = False


def project_pythonpath() -> dict[str, str]:
    """PYTHONPATH that lets `python -m shard.cli` / `router.cli` find the tree this launcher runs from.

    Children are started with `-m`, which searches the working directory; without this a launcher
    run from elsewhere (and not pip-installed) would start children that cannot import themselves.
    """
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{root}{os.pathsep}{existing}" if existing else root}


def shard_command(
    model_dir: Path,
    uds_path: str,
    dtype: str,
    kv_cache_bytes: int,
    trust_remote_code: bool = False,
    json_output: bool = False,
    threads: int | None = None,
    prefix_caching: bool = True,
) -> list[str]:
    argv = [
        sys.executable, "-m", "shard.cli",
        "--model-dir", str(model_dir),
        "--uds-path", uds_path,
        "--dtype", dtype,
        "--kv-cache-bytes", str(kv_cache_bytes),
        "--prefix-caching", "true" if prefix_caching else "false",
    ]  # fmt: skip
    if trust_remote_code:
        argv.append("--trust-remote-code")
    if json_output:
        argv.append("--json-output")
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv


def convert_command(gguf_path: Path, out_dir: Path) -> list[str]:
    """The child that dequantises a GGUF file into `out_dir` (shard/convert.py): torch stays out of the launcher."""
    return [sys.executable, "-m", "shard.convert", str(gguf_path), str(out_dir)]


# libgomp (torch's OpenMP, and the CPU kernels') spins ~300,000 times at a barrier before it sleeps:
# milliseconds, about a scheduler slice. Beside a busy process, a thread spinning for its descheduled
# teammate kept its own CPU from that teammate at every barrier of a step. 10,000 spins kept the quiet
# speed within noise and most of the busy case (3,000 kept more of it but cost ~5-20% quiet; 30,000
# gave it back): docs/benchmarks.md, "A busy neighbour". A user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY
# is kept.
GOMP_SPINCOUNT = "10000"


def openmp_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The OpenMP settings a shard gets unless the user set them."""
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return {}
    return {"GOMP_SPINCOUNT": GOMP_SPINCOUNT}


def shard_env(rank: int, world_size: int, master_addr: str, master_port: int) -> dict[str, str]:
    # torch.distributed's env:// initialisation reads exactly these names.
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }


def router_command(
    model_id: str,
    tokenizer_dir: Path,
    uds_path: str,
    hostname: str,
    port: int,
    router_flags: Sequence[str] = (),
) -> list[str]:
    return [
        sys.executable, "-m", "router.cli",
        "--model-id", model_id,
        "--tokenizer-dir", str(tokenizer_dir),
        "--shard-uds-path", uds_path,
        "--hostname", hostname,
        "--port", str(port),
        *router_flags,
    ]  # fmt: skip


def plan_launch(
    *,
    model_dir: Path,
    model_id: str,
    num_shard: int,
    dtype: str,
    trust_remote_code: bool,
    kv_cache_bytes: int,
    uds_path: str,
    master_addr: str,
    master_port: int,
    hostname: str,
    port: int,
    router_flags: Sequence[str],
    json_output: bool = False,
    grace_s: float = DEFAULT_GRACE_S,
    shard_extra_env: Mapping[str, str] | None = None,
    router_extra_env: Mapping[str, str] | None = None,
    nnodes: int = 1,
    node_rank: int = 0,
    shard_port: int = 29700,
    threads: int | None = None,
    prefix_caching: bool = True,
) -> LaunchPlan:
    """The real launch: `num_shard` shard ranks behind one router.

    Extra environment goes to the children only (secrets such as the API key stay out of argv, where
    every user could read them with `ps`)."""
    command = shard_command(model_dir, uds_path, dtype, kv_cache_bytes, trust_remote_code, json_output, threads,
                            prefix_caching)
    pythonpath = project_pythonpath()
    # --num-shard is the whole world; this node runs its share, ranks node_rank * local .. + local - 1.
    local = num_shard // nnodes
    ranks = [node_rank * local + i for i in range(local)]
    shards = []
    for i, rank in enumerate(ranks):
        # LOCAL_WORLD_SIZE: the shards sharing this machine's CPUs (shard/cpu_budget.py divides them).
        env = {**pythonpath, **shard_env(rank, num_shard, master_addr, master_port), "LOCAL_RANK": str(i),
               "LOCAL_WORLD_SIZE": str(local), "NODE_RANK": str(node_rank), **openmp_env(os.environ),
               **(shard_extra_env or {})}
        if nnodes > 1:  # the router on node 0 reaches other nodes' shards over TCP
            env["SHARD_PORT"] = str(shard_port + i)
        shards.append(ChildSpec(f"shard {rank}", command, env))
    router = None
    if node_rank == 0:
        router = ChildSpec(
            "router", router_command(model_id, model_dir, uds_path, hostname, port, router_flags),
            {**pythonpath, **(router_extra_env or {})},
        )
    return LaunchPlan(
        shards=shards,
        shard_sockets=[shard_socket_path(uds_path, rank) for rank in ranks],
        router=router,
        router_health_url=health_url(hostname, port),
        public_url=public_url(hostname, port),
        grace_s=grace_s,
        json_output=json_output,
    )
