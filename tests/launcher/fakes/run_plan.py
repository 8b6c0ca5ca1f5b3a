"""Run a LaunchPlan given as JSON in argv[1], as the launcher process would, and exit with its code.

Lets tests signal (or SIGKILL) a real launcher process while keeping fake children.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launcher.commands import ChildSpec, LaunchPlan
from launcher.processes import launch


def main() -> None:
    raw = json.loads(sys.argv[1])
    plan = LaunchPlan(
        shards=[ChildSpec(**spec) for spec in raw["shards"]],
        shard_sockets=[Path(path) for path in raw["shard_sockets"]],
        router=ChildSpec(**raw["router"]),
        router_health_url=raw["router_health_url"],
        public_url=raw["public_url"],
        shard_ready_timeout_s=raw["shard_ready_timeout_s"],
        router_ready_timeout_s=raw["router_ready_timeout_s"],
        grace_s=raw["grace_s"],
    )
    sys.exit(launch(plan))


if __name__ == "__main__":
    main()
