from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import LaunchedServer, launch
from tests.model_factory import build_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 query heads over 3 KV heads, like SmolLM2: uneven for 2 shards."""
    return build_llama(tmp_path_factory.mktemp("tiny-llama"), num_attention_heads=9, num_key_value_heads=3,
                       head_dim=8, suppress_eos=True)


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    s = launch(tiny_llama, "--max-input-tokens", "256", "--max-total-tokens", "2048",
               "--max-concurrent-requests", "8")
    yield s
    assert s.stop() == 0, s.log()
