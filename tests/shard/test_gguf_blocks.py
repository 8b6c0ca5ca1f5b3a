"""`--quantize int4` on the embedded SmolLM2 takes the GGUF's own Q4_1 blocks (shard/gguf_blocks.py): they
must be exactly the weights the converted checkpoint holds, rows in the checkpoint's order, and a rank's
slices must be the whole matrix's."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from launcher.embedded import embedded_gguf_path, ensure_embedded_model
from launcher.model_source import default_cache_dir
from shard.gguf_blocks import FIRST_MATRIX, GgufBlocks, gguf_name, repack_q4_1, unpermute_rows
from shard.models.config import ModelConfig
from shard.quantization import dequantize_int4, quantize_int4, unpack_int4
from shard.weights import Weights

MATRICES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_embedded_model(default_cache_dir()).path


@pytest.fixture(scope="module")
def blocks(model_dir: Path) -> GgufBlocks:
    config = ModelConfig.load(model_dir)
    return GgufBlocks(embedded_gguf_path(), config.num_heads, config.num_kv_heads)


@pytest.mark.parametrize("layer", [0, 29])
def test_the_gguf_blocks_are_the_converted_checkpoints_weights(model_dir: Path, blocks: GgufBlocks,
                                                               layer: int) -> None:
    weights = Weights(model_dir, torch.float32, torch.device("cpu"))
    for matrix in MATRICES:
        name = f"model.layers.{layer}.{matrix}.weight"
        reference = weights.get(name)  # float32: the conversion dequantized these same blocks
        out_features, in_features = reference.shape
        rows = blocks.rows(name, 0, out_features, in_features)
        assert rows is not None, name
        assert torch.equal(dequantize_int4(rows, in_features), reference), name


def test_a_ranks_slices_are_the_whole_matrixs(model_dir: Path, blocks: GgufBlocks) -> None:
    weights = Weights(model_dir, torch.float32, torch.device("cpu"))
    for name in ("model.layers.3.self_attn.o_proj.weight", "model.layers.3.mlp.down_proj.weight"):
        reference = weights.get(name)
        k = reference.shape[1]
        for start, end in ((0, k // 2), (k // 2, k), (k // 3 // 32 * 32, k)):
            part = blocks.columns(name, start, end, k)
            assert part is not None
            assert torch.equal(dequantize_int4(part, end - start), reference[:, start:end]), (name, start, end)
    name = "model.layers.3.self_attn.k_proj.weight"
    reference = weights.get(name)
    part = blocks.rows(name, 64, 128, reference.shape[1])
    assert part is not None and torch.equal(dequantize_int4(part, reference.shape[1]), reference[64:128])


def test_a_matrix_the_gguf_lacks_or_shapes_otherwise_is_none(blocks: GgufBlocks) -> None:
    assert blocks.rows("model.layers.0.input_layernorm.weight", 0, 576, 576) is None
    assert blocks.rows("model.layers.0.self_attn.q_proj.weight", 0, 576, 512) is None
    assert blocks.rows("model.layers.99.self_attn.q_proj.weight", 0, 576, 576) is None
    assert gguf_name("model.layers.7.mlp.down_proj.weight") == "blk.7.ffn_down.weight"
    assert gguf_name("lm_head.weight") is None


def test_unpermute_rows_undoes_llama_cpps_rotary_permutation() -> None:
    # llama.cpp's converter stores q_proj / k_proj rows per head as (half, pair) rather than (pair, half)
    heads, head_dim, k = 3, 8, 5
    weight = torch.randn(heads * head_dim, k)
    permuted = weight.reshape(heads, 2, head_dim // 2, k).swapaxes(1, 2).reshape(heads * head_dim, k)
    assert torch.equal(permuted[unpermute_rows(heads * head_dim, heads)], weight)


def test_repacking_gives_quantize_int4s_row_layout() -> None:
    torch.manual_seed(0)
    rows = quantize_int4(torch.randn(4, 96))
    nibbles, d, m = unpack_int4(rows)
    # the same blocks as a GGUF stores them: d, m, then the 16 bytes of nibbles, block after block
    scales = torch.stack([d, m], dim=-1).view(torch.uint8).reshape(4, 3, 4)
    gguf = torch.cat([scales, nibbles], dim=-1).reshape(4, 60)
    assert torch.equal(repack_q4_1(gguf), rows)


def test_the_int4_engine_holds_the_gguf_blocks(model_dir: Path) -> None:
    from shard import cli
    from shard.distributed import Distributed

    args = argparse.Namespace(model_dir=model_dir, dtype="bfloat16", kv_cache_bytes=64 << 20, block_size=16,
                              trust_remote_code=False, prefill_chunk_tokens=256, quantize="int4",
                              gguf_source=embedded_gguf_path())
    engine = cli.build_engine(args, Distributed(rank=0, world_size=1, device=torch.device("cpu")))
    model = engine.runner.model
    assert engine.runner.model.layers[0].qkv.weight.dtype == torch.uint8
    source = GgufBlocks(embedded_gguf_path(), 9, 3)
    layer = model.layers[5]
    expected_qkv = torch.cat([source.rows(f"model.layers.5.self_attn.{p}_proj.weight", 0, n, 576)
                              for p, n in (("q", 576), ("k", 192), ("v", 192))])
    assert torch.equal(layer.qkv.weight, expected_qkv)
    assert torch.equal(layer.down.weight, source.rows("model.layers.5.mlp.down_proj.weight", 0, 576, 1536))


def test_a_gguf_of_another_model_is_not_used(model_dir: Path, blocks: GgufBlocks, tmp_path: Path) -> None:
    from tests.model_factory import build_llama

    assert blocks.matches(Weights(model_dir, torch.bfloat16, torch.device("cpu")).peek(FIRST_MATRIX))
    # the same names and q_proj shape (576 x 576), other weights: a stray GGUF_SOURCE must not replace them
    other = build_llama(tmp_path / "other", num_attention_heads=9, num_key_value_heads=3, head_dim=64)
    assert not blocks.matches(Weights(other, torch.bfloat16, torch.device("cpu")).peek(FIRST_MATRIX))
    assert not blocks.matches(torch.zeros(576, 512))


def test_a_gguf_source_that_is_missing_or_no_gguf_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from shard.gguf_blocks import open_gguf_blocks

    assert open_gguf_blocks(tmp_path / "absent.gguf", 9, 3) is None
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF?" + bytes(200))
    assert open_gguf_blocks(junk, 9, 3) is None
    assert "is not a file" in caplog.text and "is not a readable GGUF" in caplog.text
