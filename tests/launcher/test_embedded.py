"""The embedded SmolLM2: GGUF -> safetensors conversion, its fidelity, its cache and its lock."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from launcher import embedded
from launcher.model_source import ModelSourceError, resolve_model


def test_conversion_matches_the_gguf_model_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shard.convert import load_gguf

    monkeypatch.setenv("TGI_PY_CACHE", str(tmp_path / "cache"))
    resolved = resolve_model(None)  # the real child: python -m shard.convert
    assert resolved.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolved.path == tmp_path / "cache" / "SmolLM2-135M-Instruct"

    config = json.loads((resolved.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == "float32" and "quantization_config" not in config
    generation = json.loads((resolved.path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    assert "chat_template" in json.loads((resolved.path / "tokenizer_config.json").read_text())

    # The reference is what transformers reads from the GGUF file itself, loaded here.
    reference, reference_tokenizer = load_gguf(embedded.embedded_gguf_path())
    assert reference.config.quantization_config is not None  # really the GGUF-loaded model
    converted = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    converted_tokenizer = AutoTokenizer.from_pretrained(resolved.path)

    prompt = "The capital of France is"
    ids = converted_tokenizer(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == reference_tokenizer(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        expected = reference(ids).logits
        actual = converted(ids).logits
    assert actual.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(actual, expected, atol=1e-4, rtol=1e-4)

    def no_reconversion(*_: Any) -> None:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(embedded, "_convert_gguf", no_reconversion)
    assert resolve_model(None) == resolved
    assert not list((tmp_path / "cache").glob(".*tmp*"))


# Stands in for `python -m shard.convert GGUF OUT_DIR`: a progress line redrawn with carriage returns,
# then the files a conversion writes (or an exit status of its choosing).
FAKE_CONVERTER = """
import sys, pathlib
out = pathlib.Path(sys.argv[2])
sys.stderr.write("step 1/2\\rstep 2/2\\n")
if sys.argv[3] != "0":
    print("no room left on device", file=sys.stderr)
    sys.exit(int(sys.argv[3]))
for name in ("config.json", "model.safetensors", "tokenizer.json"):
    (out / name).write_text("{}")
"""


def _fake_converter(monkeypatch: pytest.MonkeyPatch, exit_code: int = 0) -> None:
    monkeypatch.setattr(
        embedded, "convert_command",
        lambda gguf, out_dir: [sys.executable, "-c", FAKE_CONVERTER, str(gguf), str(out_dir), str(exit_code)],
    )


def test_the_conversion_child_writes_the_files_and_the_launcher_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _fake_converter(monkeypatch)
    target = resolve_model(None, cache_dir=tmp_path).path

    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", embedded.MARKER_FILE])
    marker = json.loads((target / embedded.MARKER_FILE).read_text())
    assert marker == embedded._source_description(embedded.embedded_gguf_path())
    err = capfd.readouterr().err
    assert "first run, converting" in err and "step 1/2\rstep 2/2\n" in err  # relayed as it came
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_failed_conversion_child_is_an_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_converter(monkeypatch, exit_code=3)
    with pytest.raises(ModelSourceError, match="shard.convert exited with code 3: no room left on device"):
        resolve_model(None, cache_dir=tmp_path)
    assert not (tmp_path / embedded.CACHE_SUBDIR).exists()
    assert not list(tmp_path.glob(".*tmp*"))


def _fake_conversion(calls: list[float], delay_s: float = 0.0) -> Any:
    """Stands in for the real conversion: writes a minimal complete directory the same way."""

    def convert(gguf_path: Path, target: Path, source: dict[str, Any]) -> None:
        calls.append(time.monotonic())
        time.sleep(delay_s)
        staging = target.parent / f".{embedded.CACHE_SUBDIR}.tmp-fake"
        staging.mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (staging / name).write_text("{}")
        (staging / embedded.MARKER_FILE).write_text(json.dumps(source))
        staging.rename(target)

    return convert


def test_concurrent_launchers_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(embedded, "_convert_gguf", _fake_conversion(calls, delay_s=0.5))
    results: list[Path] = []

    def resolve() -> None:
        results.append(resolve_model(None, cache_dir=tmp_path).path)

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 1
    assert results == [tmp_path / embedded.CACHE_SUBDIR] * 3


def test_incomplete_cache_and_leftovers_are_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / embedded.CACHE_SUBDIR
    target.mkdir()
    (target / "config.json").write_text("{}")  # no weights, no marker: an interrupted older layout
    leftover = tmp_path / f".{embedded.CACHE_SUBDIR}.tmp-killed"
    leftover.mkdir()
    calls: list[float] = []
    monkeypatch.setattr(embedded, "_convert_gguf", _fake_conversion(calls))

    assert resolve_model(None, cache_dir=tmp_path).path == target
    assert len(calls) == 1
    assert not leftover.exists()
    assert (target / "model.safetensors").exists()


def test_marker_from_another_source_triggers_reconversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(embedded, "_convert_gguf", _fake_conversion(calls))
    resolve_model(None, cache_dir=tmp_path)
    marker = tmp_path / embedded.CACHE_SUBDIR / embedded.MARKER_FILE
    marker.write_text(json.dumps({"version": 0}))

    resolve_model(None, cache_dir=tmp_path)
    assert len(calls) == 2
