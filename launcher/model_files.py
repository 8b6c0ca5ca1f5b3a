"""What a servable model directory holds, and the error raised when a model cannot be served.

Shared by launcher/model_source.py (which resolves --model-id) and launcher/embedded.py (which builds
the embedded model's directory), so that neither has to import the other's module back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# What the shard (weights + config) and the router (tokenizer) both need to start.
REQUIRED_FILES: tuple[str, ...] = ("config.json", "tokenizer.json")


class ModelSourceError(Exception):
    """The requested model cannot be served; the message says why and what is missing."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    # Shown to clients (/info, /v1/models): the hub name rather than a cache path.
    model_id: str
    # The GGUF `path` was converted from, where there is one: --quantize int4 takes its Q4_1 blocks as they are.
    gguf: Path | None = None


def missing_model_files(model_dir: Path) -> list[str]:
    """Names of what `model_dir` lacks to be servable; empty when it is complete."""
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if not any(model_dir.glob("*.safetensors")):
        missing.insert(1, "*.safetensors (model weights)")
    return missing


def check_model_dir(model_dir: Path) -> None:
    missing = missing_model_files(model_dir)
    if missing:
        raise ModelSourceError(f"model directory {model_dir} is missing: {', '.join(missing)}")
