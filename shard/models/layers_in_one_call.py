"""All decoder layers of a one-rank CPU step as one C call (shard/kernels/cpu_decode.c).

The layer-by-layer path makes ~10 Python-to-C calls per layer; at batch 1 in bf16 those calls cost
about half as much again as streaming the weights. This runs the same kernels, in the same order, in
one call: the logits are the same bits, only the Python between them is gone. It applies where every
row attends through the paged cache: decode tokens, and with the kernel ops prompt tokens too (so a
step that mixes both goes through it as well), there is one rank (no all-reduce between operations)
and the step has few enough rows for the GEMV kernels (larger steps go through torch's BLAS, layer by
layer).

It knows the layers only as their tensors (DecoderLayer.decode_weights) and their sizes, so it does not
import the model code that builds it. With --quantize the matrices are int8 or int4 (shard/quantization.py)
and the same step runs the quantized GEMV kernels.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from shard.kernels import cpu as cpu_kernels
from shard.thread_governor import ThreadGovernor

if TYPE_CHECKING:
    from shard.kv_cache import KVCache
    from shard.models.attention import AttentionInputs


# The matrices' weights, as cpu_decode.c's decode_step.quant reads them (int8 and int4: shard/quantization.py).
QUANT_CODES = {None: 0, "int8": 8, "int4": 4}


@dataclass(frozen=True)
class LayerShape:
    """The sizes every layer of the model shares (this rank's heads)."""

    hidden: int
    num_q: int
    num_kv: int
    head_dim: int
    intermediate: int
    eps: float


def _pointer(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    assert tensor.is_contiguous()
    return tensor.data_ptr()


class LayersInOneCall:
    def __init__(self, kernels: cpu_kernels.CpuKernels, layer_weights: list[Mapping[str, torch.Tensor | None]],
                 shape: LayerShape, dtype: torch.dtype, quantize: str | None = None) -> None:
        self.kernels = kernels
        # Each layer's tensors named as the fields of the C layer struct (DecoderLayer.decode_weights).
        self.layer_weights = layer_weights
        self.max_rows = kernels.preferred_max_rows(dtype)
        self.dtype = dtype
        self.dims = dict(hidden=shape.hidden, num_q=shape.num_q, num_kv=shape.num_kv, head_dim=shape.head_dim,
                         intermediate=shape.intermediate, bf16=int(dtype == torch.bfloat16), eps=shape.eps,
                         scale=shape.head_dim ** -0.5, quant=QUANT_CODES[quantize])
        # Created at the first step: the thread budget is set on the engine thread after loading.
        self.governor: ThreadGovernor | None = None
        self._layer_array: ctypes.Array | None = None
        self._cache_key: tuple[int, ...] = ()

    @staticmethod
    def fits(shape: LayerShape, dtype: torch.dtype) -> bool:
        """Whether the kernels take this model: float32 or bf16, heads within paged_attention's limits."""
        return (dtype in (torch.float32, torch.bfloat16)
                and cpu_kernels.paged_attention_fits(shape.num_q, shape.num_kv, shape.head_dim))

    def covers(self, attn: AttentionInputs, rows: int) -> bool:
        return not attn.prefill_spans and attn.paged_rows == rows <= self.max_rows and attn.block_tables is not None

    def _layers_for(self, cache: KVCache) -> ctypes.Array:
        # The structs hold raw cache addresses: rebuilt whenever the pool is reallocated.
        key = tuple(t.data_ptr() for t in (*cache.keys, *cache.values))
        if self._layer_array is None or key != self._cache_key:
            array = (cpu_kernels.DecodeLayer * len(self.layer_weights))()
            for entry, weights, k_cache, v_cache in zip(array, self.layer_weights, cache.keys, cache.values,
                                                        strict=True):
                for name, tensor in (*weights.items(), ("k_cache", k_cache), ("v_cache", v_cache)):
                    setattr(entry, name, _pointer(tensor))
            self._layer_array, self._cache_key = array, key
        return self._layer_array

    def __call__(self, x: torch.Tensor, rope: Any, attn: AttentionInputs,
                 cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual stream, last MLP output) after every layer, as the layer loop returns them."""
        d = self.dims
        rows = x.shape[0]
        cos, sin = rope
        x = x.contiguous()
        delta = torch.empty_like(x)
        scratch = {name: torch.empty((rows, width), dtype=self.dtype) for name, width in (
            ("h", d["hidden"]), ("qkv", (d["num_q"] + 2 * d["num_kv"]) * d["head_dim"]),
            ("attn", d["num_q"] * d["head_dim"]), ("gate_up", 2 * d["intermediate"]), ("act", d["intermediate"]))}
        tables, lengths = attn.block_tables, attn.context_lengths
        assert tables is not None and lengths is not None
        assert tables.dtype == lengths.dtype == torch.int32 and attn.slot_mapping.dtype == torch.int64
        if self.governor is None:
            self.governor = ThreadGovernor(torch.get_num_threads())
        threads = self.governor.choose(rows)
        step = cpu_kernels.DecodeStep(
            batch=rows, threads=threads, block_size=attn.block_size, max_blocks=tables.shape[1], **d,
            cos=_pointer(cos), sin=_pointer(sin), slots=_pointer(attn.slot_mapping), block_tables=_pointer(tables),
            lengths=_pointer(lengths), **{name: t.data_ptr() for name, t in scratch.items()},
        )
        layer_array = self._layers_for(cache)
        start = time.perf_counter_ns()
        self.kernels.decode_layers(layer_array, step, x, delta)
        self.governor.observe(rows, threads, time.perf_counter_ns() - start)
        return x, delta
