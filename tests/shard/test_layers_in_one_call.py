"""The one-call step (shard/models/layers_in_one_call.py over shard/kernels/cpu_decode.c) against the
layer-by-layer kernel path."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from shard.cli import build_engine
from shard.distributed import Distributed
from shard.engine import Engine
from shard.kernels import cpu
from shard.models.layers_in_one_call import LayersInOneCall
from shard.types import Request
from tests.model_factory import build_llama


@pytest.fixture(autouse=True)
def fresh_kernel_choice():
    """Each test picks the kernels by its own environment; later tests get the default choice back."""
    cpu.load.cache_clear()
    yield
    cpu.load.cache_clear()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # head_dim 16 takes the vectorised attention, biases the bias paths, hidden 96 a K that is not a
    # multiple of the bf16 step.
    return build_llama(tmp_path_factory.mktemp("one-call-llama"), num_attention_heads=6, num_key_value_heads=2,
                       head_dim=16, attention_bias=True, suppress_eos=True)


def new_engine(model_dir: Path, dtype: str, one_call: bool, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv(cpu.DISABLE_ENV, "force")  # the kernel path even on a CPU without AVX-512
    args = argparse.Namespace(model_dir=model_dir, dtype=dtype, kv_cache_bytes=4 << 20, block_size=16)
    engine = build_engine(args, Distributed(0, 1, torch.device("cpu")))
    model = engine.runner.model  # type: ignore[attr-defined]
    assert model.one_call_layers is not None, "the kernel path on one rank should run its layers in one call"
    if not one_call:
        model.one_call_layers = None
    return engine


def generate(engine: Engine, steps: int) -> list[tuple[int, int, float, list[float]]]:
    """(request, token, logprob, top-5 logprobs) for every token of three requests decoded together."""
    prompts = {1: [5, 6, 7], 2: list(range(40, 58)), 3: [100, 3, 9, 11, 250, 7, 7, 7]}  # 18 crosses a block
    requests = [Request(id=rid, input_ids=ids, top_n_tokens=5, max_new_tokens=steps + 1)
                for rid, ids in prompts.items()]
    result = engine.prefill(1, requests, None)
    out = []
    for _ in range(steps):
        result = engine.decode([result.batch.id])
        out += [(g.request_id, g.tokens.ids[0], g.tokens.logprobs[0], list(g.top_tokens[0].logprobs))
                for g in result.generations]
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layers_in_one_call_give_the_same_bits_as_the_layer_loop(model_dir: Path, dtype: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = LayersInOneCall.__call__

    def counting(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LayersInOneCall, "__call__", counting)
    layer_by_layer = generate(new_engine(model_dir, dtype, one_call=False, monkeypatch=monkeypatch), steps=6)
    assert calls == []
    one_call = generate(new_engine(model_dir, dtype, one_call=True, monkeypatch=monkeypatch), steps=6)
    # the prefill too: its 29 prompt rows attend through the paged cache like decode rows
    assert calls == [29] + [3] * 6, "every step of the batch should have taken the one-call path"
    assert one_call == layer_by_layer
    assert len({token for _, token, _, _ in one_call}) > 3, "a degenerate model would make the comparison weak"


def test_without_the_kernels_steps_run_layer_by_layer(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.DISABLE_ENV, "0")
    args = argparse.Namespace(model_dir=model_dir, dtype="float32", kv_cache_bytes=4 << 20, block_size=16)
    assert build_engine(args, Distributed(0, 1, torch.device("cpu"))).runner.model.one_call_layers is None
