"""Decide which model directory the shards and the router will serve.

Three sources, tried in order: the embedded SmolLM2 (no --model-id), a local directory, the local
Hugging Face hub cache. There is no network access, so a hub id that is not cached is an error rather
than a download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from launcher.embedded import ensure_embedded_model
from launcher.model_files import ModelSourceError, ResolvedModel, check_model_dir, missing_model_files

DEFAULT_CACHE_ENV = "TGI_PY_CACHE"
# TGI caps its derived default so a model with a huge context does not claim a huge KV budget.
DEFAULT_MAX_TOTAL_TOKENS_CAP = 4096


def default_cache_dir() -> Path:
    configured = os.environ.get(DEFAULT_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "tgi-py"


def resolve_model(
    model_id: str | None,
    revision: str | None = None,
    cache_dir: Path | None = None,
) -> ResolvedModel:
    """Turn a --model-id value into a directory holding config, safetensors weights and tokenizer."""
    if model_id is None or model_id == "":
        return ensure_embedded_model(cache_dir if cache_dir is not None else default_cache_dir())

    local = Path(model_id).expanduser()
    if local.is_dir():
        check_model_dir(local)
        return ResolvedModel(path=local.resolve(), model_id=model_id)
    if local.exists():
        raise ModelSourceError(f"--model-id {model_id} is a file; give a model directory or a hub id")
    return _from_hub_cache(model_id, revision)


def _from_hub_cache(model_id: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except HFValidationError as err:
        raise ModelSourceError(
            f"--model-id {model_id!r} is neither a local directory nor a valid hub id ({err})"
        ) from err
    except (LocalEntryNotFoundError, FileNotFoundError) as err:
        wanted = f"{model_id}@{revision}" if revision else model_id
        raise ModelSourceError(
            f"--model-id {wanted} is not a local directory and is not in the local Hugging Face hub "
            "cache (tgi-py does not download models; fetch it first, e.g. `huggingface-cli download`)"
        ) from err
    missing = missing_model_files(snapshot)
    if missing:
        raise ModelSourceError(f"cached hub snapshot of {model_id} ({snapshot}) is missing: {', '.join(missing)}")
    return ResolvedModel(path=snapshot, model_id=model_id)


def default_token_limits(model_dir: Path) -> tuple[int, int]:
    """(max_input_tokens, max_total_tokens) as TGI derives them when the flags are absent."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelSourceError(f"cannot read {config_path}: {err}") from err
    positions = _max_positions(config)
    max_total = min(positions, DEFAULT_MAX_TOTAL_TOKENS_CAP) if positions else DEFAULT_MAX_TOTAL_TOKENS_CAP
    if max_total < 2:
        raise ModelSourceError(f"{config_path}: a context of {positions} tokens leaves no room to generate")
    return max_total - 1, max_total


def _max_positions(config: dict[str, object]) -> int | None:
    # Multimodal configs keep the language model's limits under text_config.
    sources = [config]
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        sources.append(text_config)
    for source in sources:
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
