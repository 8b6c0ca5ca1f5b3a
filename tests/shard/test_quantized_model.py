"""--quantize int8 / int4 in the model: the one-call step against the layer loop, the weights it reports,
and the tensor-parallel split that int4 refuses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from shard.cli import build_engine, parse_args
from shard.distributed import Distributed
from shard.engine import Engine
from shard.kernels import cpu
from shard.models.config import ModelConfig
from shard.models.llama import LlamaModel
from shard.quantization import QuantizedLinear
from shard.speculation import MIN_GAIN, MIN_GAIN_QUANTIZED
from shard.weights import Weights
from tests.model_factory import build_llama
from tests.shard.test_layers_in_one_call import fresh_kernel_choice, generate  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hidden 96 and intermediate 80: K of 96 (three int4 groups) and 80 (two and a partial one); biases
    return build_llama(tmp_path_factory.mktemp("quantized-llama"), num_attention_heads=6, num_key_value_heads=2,
                       head_dim=16, attention_bias=True, suppress_eos=True)


def new_engine(model_dir: Path, dtype: str, quantize: str | None, monkeypatch: pytest.MonkeyPatch,
               one_call: bool = True) -> Engine:
    monkeypatch.setenv(cpu.DISABLE_ENV, "force")
    args = argparse.Namespace(model_dir=model_dir, dtype=dtype, kv_cache_bytes=4 << 20, block_size=16,
                              quantize=quantize)
    engine = build_engine(args, Distributed(0, 1, torch.device("cpu")))
    model = engine.runner.model  # type: ignore[attr-defined]
    assert model.one_call_layers is not None
    if not one_call:
        model.one_call_layers = None
    return engine


@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_quantized_one_call_step_gives_the_layer_loops_bits(model_dir: Path, dtype: str, quantize: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = new_engine(model_dir, dtype, quantize, monkeypatch)
    model = engine.runner.model  # type: ignore[attr-defined]
    assert all(isinstance(layer.qkv, QuantizedLinear) for layer in model.layers)
    assert isinstance(model.lm_head.linear, QuantizedLinear)
    one_call = generate(engine, steps=6)
    layer_by_layer = generate(new_engine(model_dir, dtype, quantize, monkeypatch, one_call=False), steps=6)
    assert one_call == layer_by_layer
    if quantize == "int8":  # close to the float model's choices (int4 of a random tiny model is not)
        floats = generate(new_engine(model_dir, dtype, None, monkeypatch), steps=1)
        assert [t for _, t, _, _ in floats] == [t for _, t, _, _ in one_call[:3]]


def test_quantized_weights_are_what_the_rank_reports(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {q: new_engine(model_dir, "bfloat16", q, monkeypatch).weight_bytes for q in (None, "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes[None]


def test_int4_split_off_group_boundaries_is_refused(model_dir: Path) -> None:
    # 2 ranks: o_proj's 96 input columns split 48 / 48, not on a 32-weight boundary
    weights = Weights(model_dir, torch.float32, torch.device("cpu"), "int4")
    with pytest.raises(ValueError, match="--quantize int4 with --num-shard 2: .* group boundary"):
        LlamaModel(ModelConfig.load(model_dir), weights, Distributed(0, 2, torch.device("cpu")))


def test_the_shard_refuses_an_unsupported_quantize(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--model-dir", "x", "--quantize", "eetq"]).quantize == "int8"
    with pytest.raises(SystemExit):
        parse_args(["--model-dir", "x", "--quantize", "gptq"])
    assert "supported: int8" in capsys.readouterr().err


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_speculation_drafts_more_sparingly_on_quantized_weights(model_dir: Path, quantize: str | None) -> None:
    # a quantized verify row costs a larger share of a step: a draft must be likelier to be kept
    args = argparse.Namespace(model_dir=model_dir, dtype="bfloat16", kv_cache_bytes=4 << 20, block_size=16,
                              quantize=quantize, speculate=3)
    drafter = build_engine(args, Distributed(0, 1, torch.device("cpu"))).drafter
    assert drafter.min_gain == (MIN_GAIN_QUANTIZED if quantize else MIN_GAIN)
    assert MIN_GAIN_QUANTIZED > MIN_GAIN
