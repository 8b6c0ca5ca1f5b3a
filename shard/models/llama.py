"""Llama, Mistral, Qwen2 and SmolLM2 written for tensor parallelism over a paged KV cache.

Each rank owns whole KV groups (a KV head and the query heads that share it), so any number of ranks
up to the number of KV heads works, even when the heads do not divide evenly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from common.arith import ceil_div
from shard.distributed import Distributed, split_range
from shard.kv_cache import KVCache
from shard.models import weight_arena
from shard.models.attention import AttentionInputs
from shard.models.config import ModelConfig
from shard.models.layers import Linear, Rotary, VocabParallelEmbedding, VocabParallelHead, linear
from shard.models.layers_in_one_call import LayerShape, LayersInOneCall
from shard.models.ops import KernelOps, LayerOps, ops_for
from shard.quantization import HEAD_QUANTIZATION, QuantizedLinear, check_row_parallel_split
from shard.weights import Weights


@dataclass(frozen=True)
class Partition:
    """The heads and MLP columns of one rank."""

    q_heads: tuple[int, int]
    kv_heads: tuple[int, int]
    mlp: tuple[int, int]
    vocab: tuple[int, int]
    vocab_rows_padded: int

    @classmethod
    def of(cls, config: ModelConfig, rank: int, world_size: int) -> Partition:
        if world_size > config.num_kv_heads:
            raise ValueError(
                f"--num-shard {world_size} is larger than the model's {config.num_kv_heads} KV heads: "
                f"each shard needs at least one whole KV group"
            )
        group = config.num_heads // config.num_kv_heads
        kv = split_range(config.num_kv_heads, world_size, rank)
        per_rank_vocab = ceil_div(config.vocab_size, world_size)
        vocab_start = min(rank * per_rank_vocab, config.vocab_size)
        return cls(
            q_heads=(kv[0] * group, kv[1] * group),
            kv_heads=kv,
            mlp=split_range(config.intermediate_size, world_size, rank),
            vocab=(vocab_start, min(vocab_start + per_rank_vocab, config.vocab_size)),
            vocab_rows_padded=per_rank_vocab,
        )


class DecoderLayer:
    def __init__(self, prefix: str, config: ModelConfig, part: Partition, weights: Weights,
                 dist: Distributed, ops: LayerOps) -> None:
        hd = config.head_dim
        self.config = config
        self.dist = dist
        self.ops = ops
        self.num_q = part.q_heads[1] - part.q_heads[0]
        self.num_kv = part.kv_heads[1] - part.kv_heads[0]
        q_rows = (part.q_heads[0] * hd, part.q_heads[1] * hd)
        kv_rows = (part.kv_heads[0] * hd, part.kv_heads[1] * hd)
        attn = f"{prefix}.self_attn"
        self.quantize = getattr(weights, "quantize", None)
        # q, k and v fused into one matmul; gate and up likewise.
        qkv_parts = [(f"{attn}.q_proj.weight", q_rows), (f"{attn}.k_proj.weight", kv_rows),
                     (f"{attn}.v_proj.weight", kv_rows)]
        qkv_bias = None
        if config.attention_bias:
            qkv_bias = torch.cat([
                weights.get_rows(f"{attn}.q_proj.bias", *q_rows),
                weights.get_rows(f"{attn}.k_proj.bias", *kv_rows),
                weights.get_rows(f"{attn}.v_proj.bias", *kv_rows),
            ])
        self.qkv = self._fused(weights, qkv_parts, qkv_bias, config.hidden_size)
        self.o_proj = self._row_parallel(weights, f"{attn}.o_proj", q_rows, config.num_heads * hd)
        mlp = f"{prefix}.mlp"
        gate_up_parts = [(f"{mlp}.gate_proj.weight", part.mlp), (f"{mlp}.up_proj.weight", part.mlp)]
        gate_up_bias = None
        if config.mlp_bias:
            gate_up_bias = torch.cat([
                weights.get_rows(f"{mlp}.gate_proj.bias", *part.mlp),
                weights.get_rows(f"{mlp}.up_proj.bias", *part.mlp),
            ])
        self.gate_up = self._fused(weights, gate_up_parts, gate_up_bias, config.hidden_size)
        self.down = self._row_parallel(weights, f"{mlp}.down_proj", part.mlp, config.intermediate_size)
        self.input_norm = weights.get(f"{prefix}.input_layernorm.weight")
        self.post_norm = weights.get(f"{prefix}.post_attention_layernorm.weight")

    def _linear(self, weights: Weights, weight: torch.Tensor, bias: torch.Tensor | None,
                row_absmax: torch.Tensor | None = None) -> Linear | QuantizedLinear:
        layer = linear(weight, bias, self.quantize, row_absmax)
        if isinstance(layer, QuantizedLinear):  # what stays resident: the quantized matrix, not the float one
            weights.bytes_loaded += layer.nbytes - weight.numel() * weight.element_size()
        return layer

    def _fused(self, weights: Weights, parts: list[tuple[str, tuple[int, int]]], bias: torch.Tensor | None,
               in_features: int) -> Linear | QuantizedLinear:
        """This rank's rows of several matrices stacked into one (column parallel): under int4 the source
        GGUF's own blocks where it has them (shard/gguf_blocks.py), else the checkpoint's weights."""
        source = weights.gguf_blocks
        if source is not None:
            blocks = [source.rows(name, *rows, in_features) for name, rows in parts]
            if all(b is not None for b in blocks):
                return self._int4_rows(weights, torch.cat(blocks), in_features, bias)
        return self._linear(weights, torch.cat([weights.get_rows(name, *rows) for name, rows in parts]), bias)

    def _int4_rows(self, weights: Weights, rows: torch.Tensor, in_features: int,
                   bias: torch.Tensor | None) -> QuantizedLinear:
        layer = QuantizedLinear.from_int4_rows(rows, in_features, bias, weights.dtype)
        weights.bytes_loaded += layer.nbytes
        return layer

    def _row_parallel(self, weights: Weights, name: str, columns: tuple[int, int],
                      total: int) -> Linear | QuantizedLinear:
        """A matrix split along its input dimension: this rank's columns, the bias on rank 0 only."""
        check_row_parallel_split(self.quantize, f"{name}.weight", *columns, total, self.dist.rank,
                                 self.dist.world_size)
        source = weights.gguf_blocks
        blocks = source.columns(f"{name}.weight", *columns, total) if source is not None else None
        if blocks is not None:
            return self._int4_rows(weights, blocks, columns[1] - columns[0],
                                   self._rank0_bias(weights, f"{name}.bias"))
        row_absmax = None
        if self.quantize == "int8" and self.dist.world_size > 1:
            row_absmax = weights.row_absmax(f"{name}.weight")  # the whole rows' scales on every rank
        return self._linear(weights, weights.get_cols(f"{name}.weight", *columns),
                            self._rank0_bias(weights, f"{name}.bias"), row_absmax)

    def decode_weights(self) -> dict[str, torch.Tensor | None]:
        """The layer's tensors in the order a decode step reads them, named as the fields of the one-call
        step's layer struct (cpu_decode.c); *_scales are the int8 matrices' row scales (else None)."""
        return {"input_norm": self.input_norm, "qkv": self.qkv.weight, "qkv_scales": _scales(self.qkv),
                "qkv_bias": self.qkv.bias, "o_proj": self.o_proj.weight, "o_scales": _scales(self.o_proj),
                "o_bias": self.o_proj.bias, "post_norm": self.post_norm, "gate_up": self.gate_up.weight,
                "gate_up_scales": _scales(self.gate_up), "gate_up_bias": self.gate_up.bias,
                "down": self.down.weight, "down_scales": _scales(self.down), "down_bias": self.down.bias}

    def _rank0_bias(self, weights: Weights, name: str) -> torch.Tensor | None:
        # A row-parallel bias is added once, before the all-reduce sums the ranks.
        if self.dist.rank != 0 or not weights.has(name):
            return None
        return weights.get(name)

    def __call__(self, x: torch.Tensor, delta: torch.Tensor | None, rope: Any, attn: AttentionInputs,
                 k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual stream, this layer's MLP output): the caller's next layer (or the final norm) adds
        the second to the first, so each residual add shares a pass with the norm that follows it."""
        ops, eps = self.ops, self.config.rms_norm_eps
        if delta is None:
            h = ops.rms_norm(x, self.input_norm, eps)
        else:
            x, h = ops.add_rms_norm(x, delta, self.input_norm, eps)
        q, k, v = ops.qkv_to_cache(self.qkv(h), self.num_q, self.num_kv, self.config.head_dim, rope,
                                   attn.slot_mapping, k_cache, v_cache)
        out = self._attend(q, k, v, attn, k_cache, v_cache)
        x, h = ops.add_rms_norm(x, self.dist.all_reduce_sum(self.o_proj(out)), self.post_norm, eps)
        return x, self.dist.all_reduce_sum(self.down(ops.silu_mul(self.gate_up(h))))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionInputs,
                k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        outs = []
        if attn.paged_rows:
            outs.append(self.ops.paged_attention(q[: attn.paged_rows], attn, k_cache, v_cache))
        for span in attn.prefill_spans:
            rows = slice(span.start_row, span.start_row + span.length)
            if span.context_slots is None:
                o = self.ops.prefill_attention(q[rows].transpose(0, 1), k[rows].transpose(0, 1),
                                               v[rows].transpose(0, 1), None)
            else:
                keys = k_cache.index_select(0, span.context_slots).transpose(0, 1)
                values = v_cache.index_select(0, span.context_slots).transpose(0, 1)
                o = self.ops.prefill_attention(q[rows].transpose(0, 1), keys, values, span.mask)
            outs.append(o.transpose(0, 1).flatten(1))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def _scales(layer: Linear | QuantizedLinear) -> torch.Tensor | None:
    return getattr(layer, "scales", None)


class LlamaModel:
    def __init__(self, config: ModelConfig, weights: Weights, dist: Distributed) -> None:
        self.config = config
        self.dist = dist
        self.partition = part = Partition.of(config, dist.rank, dist.world_size)
        self.dtype = weights.dtype
        self.device = weights.device
        self.ops = ops_for(self.device, self.dtype)
        embed = weights.get_rows("model.embed_tokens.weight", *part.vocab)
        self.embed = VocabParallelEmbedding(embed, part.vocab[0], dist)
        self.layers = [
            DecoderLayer(f"model.layers.{i}", config, part, weights, dist, self.ops) for i in range(config.num_layers)
        ]
        self.norm = weights.get("model.norm.weight")
        self.quantize = quantize = getattr(weights, "quantize", None)
        tied = config.tie_word_embeddings or not weights.has("lm_head.weight")
        head = embed if tied else weights.get_rows("lm_head.weight", *part.vocab)
        self.lm_head = VocabParallelHead(head, part.vocab_rows_padded, config.vocab_size, dist,
                                         HEAD_QUANTIZATION.get(quantize) if quantize else None)
        if isinstance(self.lm_head.linear, QuantizedLinear):
            # a tied head is a quantized copy beside the embedding, which stays float for its row lookups
            weights.bytes_loaded += self.lm_head.linear.nbytes - (0 if tied else head.numel() * head.element_size())
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.rope_scaling, self.device)
        # A CPU decode step streams all of these: one buffer, in the order it reads them, reads faster.
        self.weight_arena: torch.Tensor | None = None
        if self.device.type == "cpu":
            self.weight_arena = weight_arena.pack(
                [t for layer in self.layers for t in layer.decode_weights().values()]
                + [self.norm, self.lm_head.linear.weight, _scales(self.lm_head.linear)])
        # Steps of one rank with few rows run all layers in one C call; None: layer by layer (also
        # settable, for comparisons).
        self.one_call_layers: LayersInOneCall | None = None
        first = self.layers[0]
        shape = LayerShape(hidden=config.hidden_size, num_q=first.num_q, num_kv=first.num_kv, head_dim=config.head_dim,
                           intermediate=first.gate_up.weight.shape[0] // 2, eps=config.rms_norm_eps)
        if isinstance(self.ops, KernelOps) and dist.world_size == 1 and LayersInOneCall.fits(shape, self.dtype):
            self.one_call_layers = LayersInOneCall(self.ops.kernels, [layer.decode_weights() for layer in self.layers],
                                                   shape, self.dtype, quantize)

    @property
    def local_kv_heads(self) -> int:
        return self.partition.kv_heads[1] - self.partition.kv_heads[0]

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionInputs,
                cache: KVCache, logits_indices: torch.Tensor) -> torch.Tensor:
        """Logits [len(logits_indices), vocab] for the selected flattened token positions."""
        x = self.embed(input_ids)
        rope = self.ops.rope_tables(self.rotary, positions, x.dtype)
        if self.one_call_layers is not None and self.one_call_layers.covers(attn, x.shape[0]):
            x, delta = self.one_call_layers(x, rope, attn, cache)
        else:
            delta = None
            for layer, k_cache, v_cache in zip(self.layers, cache.keys, cache.values, strict=True):
                x, delta = layer(x, delta, rope, attn, k_cache, v_cache)
        _, x = self.ops.add_rms_norm(x[logits_indices], delta[logits_indices], self.norm, self.config.rms_norm_eps)
        return self.lm_head(x).float()
