"""Where the CPU decode weights lie: 64-byte aligned, back to back in one buffer in the order a step reads
them (shard/models/weight_arena.py), with the model's results unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shard.distributed import Distributed
from shard.models.config import ModelConfig
from shard.models.llama import LlamaModel
from shard.models.weight_arena import pack
from shard.weights import ALIGNMENT, Weights
from tests.model_factory import build_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tied embeddings as SmolLM2 has them: the head is the embedding table, moved once for both
    return build_llama(tmp_path_factory.mktemp("placement-llama"), attention_bias=True, tie_word_embeddings=True)


def test_tensors_read_in_the_checkpoint_dtype_are_aligned_copies(model_dir: Path) -> None:
    checkpoint = load_file(str(next(model_dir.glob("*.safetensors"))))
    weights = Weights(model_dir, torch.float32, torch.device("cpu"))  # the checkpoint's own dtype
    for name, want in checkpoint.items():
        got = weights.get(name)
        assert got.data_ptr() % ALIGNMENT == 0, name
        assert torch.equal(got, want), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_weights_lie_in_one_buffer_in_reading_order(model_dir: Path, dtype: torch.dtype) -> None:
    config = ModelConfig.load(model_dir)
    model = LlamaModel(config, Weights(model_dir, dtype, torch.device("cpu")), Distributed(0, 1, torch.device("cpu")))
    reference = Weights(model_dir, dtype, torch.device("cpu"))
    arena = model.weight_arena
    assert arena is not None
    order = [t for layer in model.layers for t in layer.decode_weights().values() if t is not None]
    order += [model.norm, model.lm_head.linear.weight]
    starts = [t.data_ptr() for t in order]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(s % ALIGNMENT == 0 for s in starts)
    end = arena.data_ptr() + arena.numel()
    assert all(arena.data_ptr() <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= end
               for t in order)
    # the values moved with them, and the tied embedding still shares the head's memory
    assert torch.equal(model.layers[1].down.weight, reference.get("model.layers.1.mlp.down_proj.weight"))
    assert torch.equal(model.layers[0].post_norm, reference.get("model.layers.0.post_attention_layernorm.weight"))
    assert config.tie_word_embeddings
    assert model.embed.weight.data_ptr() == model.lm_head.linear.weight.data_ptr()


def test_pack_moves_each_tensor_once_and_keeps_values() -> None:
    a, b = torch.randn(3, 5), torch.arange(7, dtype=torch.int32)
    values = (a.clone(), b.clone())
    holder = {"again": a}
    buffer = pack([a, None, b, a])
    assert buffer is not None and buffer.numel() == 64 + 64  # 60 and 28 bytes, each rounded up to 64
    assert a.data_ptr() == buffer.data_ptr() and b.data_ptr() == buffer.data_ptr() + 64
    assert holder["again"].data_ptr() == a.data_ptr()
    assert torch.equal(a, values[0]) and torch.equal(b, values[1])
    assert pack([None]) is None
