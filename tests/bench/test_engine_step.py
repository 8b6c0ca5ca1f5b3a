"""bench/engine_step.py end to end on a tiny random model: one line per configuration, numbers that agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_factory import build_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("engine-step-llama"), head_dim=16, suppress_eos=True)


def test_engine_step_prints_each_path_and_batch_with_consistent_numbers(model_dir: Path) -> None:
    out = engine_step(model_dir, "--dtype", "float32,bfloat16", "--paths", "fused,layers,torch")
    lines = out.splitlines()
    assert lines[0].startswith("memory read bandwidth: ") and "over 64 MiB" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (dtype, "none", path, batch) for dtype in ("float32", "bfloat16") for path in ("fused", "layers", "torch")
        for batch in ("1", "3")]
    check_numbers(rows)


def test_engine_step_runs_the_quantized_weights(model_dir: Path) -> None:
    out = engine_step(model_dir, "--dtype", "bfloat16", "--quantize", "none,int8,int4")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[1], r[3]) for r in rows] == [(q, b) for q in ("none", "int8", "int4") for b in ("1", "3")]
    step_mb = {r[1]: float(r[6]) for r in rows}
    assert step_mb["int4"] < step_mb["int8"] < step_mb["none"]
    check_numbers(rows)


def engine_step(model_dir: Path, *args: str) -> str:
    """bench.engine_step's output at batches 1 and 3, 3 steps of 8-token prompts, with `args`."""
    return subprocess.run(
        [sys.executable, "-m", "bench.engine_step", "--model-dir", str(model_dir), "--batch", "1,3", "--steps", "3",
         "--prompt-tokens", "8", "--membw-mb", "64", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    ).stdout


def check_numbers(rows: list[list[str]]) -> None:
    for _, _, _, batch, ms, tok_s, _, weight_gbs, membw_gbs, share in rows:
        assert float(ms) > 0 and float(weight_gbs) > 0 and float(membw_gbs) > 0 and share.endswith("%")
        # the share is the weights' bandwidth over the reading printed next to it, up to the printed rounding
        # (weight GB/s has 3 decimals: a tiny model's weights on a loaded machine are well under 0.1 GB/s)
        weight, membw = float(weight_gbs), float(membw_gbs)
        rounding = 100 * (0.05 / membw + 0.05 * weight / membw ** 2) + 0.5
        assert abs(weight / membw * 100 - float(share[:-1])) <= rounding
        # tokens/s is the batch over the step time, printed to 0.1 ms
        slowest, fastest = (int(batch) / (max(float(ms) + d, 1e-3) / 1e3) for d in (0.05, -0.05))
        assert slowest - 0.05 <= float(tok_s) <= fastest + 0.05
