"""Local directories, the hub cache and token-limit defaults (the embedded model has its own file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.model_source import ModelSourceError, default_token_limits, resolve_model

COMPLETE = ("config.json", "model.safetensors", "tokenizer.json")


def make_model_dir(folder: Path, files: tuple[str, ...] = COMPLETE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_text("{}")
    return folder


def test_complete_local_dir_is_served_as_given(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path / "m")
    resolved = resolve_model(str(folder))
    assert resolved.path == folder.resolve()
    assert resolved.model_id == str(folder)


@pytest.mark.parametrize(
    ("left_out", "named"),
    [
        ("config.json", "config.json"),
        ("model.safetensors", "*.safetensors"),
        ("tokenizer.json", "tokenizer.json"),
    ],
)
def test_incomplete_local_dir_names_what_is_missing(tmp_path: Path, left_out: str, named: str) -> None:
    folder = make_model_dir(tmp_path / "m", tuple(name for name in COMPLETE if name != left_out))
    with pytest.raises(ModelSourceError) as info:
        resolve_model(str(folder))
    assert str(folder) in str(info.value)
    assert str(info.value).split("is missing: ")[1].startswith(named)


def test_empty_dir_lists_everything(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_model(str(tmp_path))
    for named in ("config.json", "*.safetensors", "tokenizer.json"):
        assert named in str(info.value)


def test_a_file_is_not_a_model(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_text("")
    with pytest.raises(ModelSourceError, match="is a file"):
        resolve_model(str(weights))


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_uncached_hub_id_is_an_error_without_network(hub_cache: Path) -> None:
    with pytest.raises(ModelSourceError, match="not a local directory and is not in the local"):
        resolve_model("some-org/not-downloaded")


def test_cached_hub_snapshot_is_found(hub_cache: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--some-org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = make_model_dir(repo / "snapshots" / commit)

    resolved = resolve_model("some-org/tiny")
    assert resolved.path == snapshot
    assert resolved.model_id == "some-org/tiny"
    assert resolve_model("some-org/tiny", revision=commit).path == snapshot


def test_cached_snapshot_without_safetensors_is_an_error(hub_cache: Path) -> None:
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = hub_cache / "models--some-org--bin-only"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    make_model_dir(repo / "snapshots" / commit, ("config.json", "pytorch_model.bin", "tokenizer.json"))
    with pytest.raises(ModelSourceError, match=r"missing: \*\.safetensors"):
        resolve_model("some-org/bin-only")


@pytest.mark.parametrize(
    ("config", "limits"),
    [
        ({"max_position_embeddings": 8192}, (4095, 4096)),
        ({"max_position_embeddings": 2048}, (2047, 2048)),
        ({"text_config": {"max_position_embeddings": 512}}, (511, 512)),
        ({"n_positions": 1024}, (1023, 1024)),
        ({}, (4095, 4096)),
    ],
)
def test_default_token_limits(tmp_path: Path, config: dict[str, object], limits: tuple[int, int]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert default_token_limits(tmp_path) == limits


def test_default_token_limits_needs_a_readable_config(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="config.json"):
        default_token_limits(tmp_path)
