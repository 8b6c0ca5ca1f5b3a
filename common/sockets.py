"""The unix sockets the shards listen on, named as TGI names them: base path, dash, rank."""

from __future__ import annotations

import os
from pathlib import Path


def shard_socket_path(uds_path: str | os.PathLike[str], rank: int) -> Path:
    """The unix socket shard `rank` listens on; the router dials rank 0's, the launcher probes each."""
    return Path(f"{os.fspath(uds_path)}-{rank}")
