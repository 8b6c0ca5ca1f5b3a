from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.clients.helpers import SERVER_FLAGS
from tests.e2e.server import LaunchedServer, launch


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    """One server per client module: 2 slots, 256 input tokens, 8192 total."""
    s = launch(tiny_llama, *SERVER_FLAGS)
    yield s
    assert s.stop() == 0, s.log()
