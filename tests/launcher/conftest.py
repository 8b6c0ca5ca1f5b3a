"""Fixtures for launcher tests: short socket paths and fake children that never outlive a test."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher.helpers import free_port, is_alive, recorded


@pytest.fixture
def uds_base() -> Iterator[str]:
    # Unix socket paths are limited to ~108 bytes, which pytest's tmp_path can exceed.
    folder = tempfile.mkdtemp(prefix="tgil-", dir="/tmp")
    yield os.path.join(folder, "srv")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Path]:
    """File the fake children log to; any of them still alive afterwards is killed (and reported)."""
    path = tmp_path / "children.log"
    yield path
    for pid, event, _ in recorded(path):
        if event == "started" and is_alive(pid):
            os.kill(pid, signal.SIGKILL)
