"""A one-rank CPU decode step's decoder layers as one C call (shard/kernels/cpu_decode.c).

The layer-by-layer path makes ~10 Python-to-C calls per layer; at batch 1 in bf16 those calls cost
about half as much again as streaming the weights. This runs the same kernels, in the same order, in
one call: the logits are the same bits, only the Python between them is gone. It applies where every
row attends through the paged cache (decode tokens; with the kernel ops, prompt tokens too), there is
one rank (no all-reduce between operations) and the step has few enough rows for the GEMV kernels
(larger steps go through torch's BLAS, layer by layer).
"""

from __future__ import annotations

import ctypes
import time
from typing import TYPE_CHECKING, Any

import torch

from shard.kernels import cpu as cpu_kernels
from shard.thread_governor import ThreadGovernor

if TYPE_CHECKING:
    from shard.kv_cache import KVCache
    from shard.models.llama import AttentionInputs, DecoderLayer


def _pointer(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    assert tensor.is_contiguous()
    return tensor.data_ptr()


class FusedDecode:
    def __init__(self, kernels: cpu_kernels.CpuKernels, layers: list[DecoderLayer], hidden: int, eps: float,
                 dtype: torch.dtype) -> None:
        first = layers[0]
        self.kernels = kernels
        self.layers = layers
        self.max_rows = kernels.preferred_max_rows(dtype)
        self.dtype = dtype
        self.dims = dict(hidden=hidden, num_q=first.num_q, num_kv=first.num_kv, head_dim=first.config.head_dim,
                         intermediate=first.gate_up.weight.shape[0] // 2, bf16=int(dtype == torch.bfloat16),
                         eps=eps, scale=first.config.head_dim ** -0.5)
        # Created at the first step: the thread budget is set on the engine thread after loading.
        self.governor: ThreadGovernor | None = None
        self._layer_array: ctypes.Array | None = None
        self._cache_key: tuple[int, ...] = ()

    @staticmethod
    def fits(layers: list[DecoderLayer], dtype: torch.dtype) -> bool:
        """Whether the kernels take this model: float32 or bf16, heads within paged_attention's limits."""
        first = layers[0]
        return (dtype in (torch.float32, torch.bfloat16)
                and cpu_kernels.paged_attention_fits(first.num_q, first.num_kv, first.config.head_dim))

    def covers(self, attn: AttentionInputs, rows: int) -> bool:
        return not attn.prefill_spans and attn.paged_rows == rows <= self.max_rows and attn.block_tables is not None

    def _layers_for(self, cache: KVCache) -> ctypes.Array:
        # The structs hold raw cache addresses: rebuilt whenever the pool is reallocated.
        key = tuple(t.data_ptr() for t in (*cache.keys, *cache.values))
        if self._layer_array is None or key != self._cache_key:
            array = (cpu_kernels.DecodeLayer * len(self.layers))()
            for entry, layer, k_cache, v_cache in zip(array, self.layers, cache.keys, cache.values, strict=True):
                for field, tensor in (*layer.decode_weights().items(), ("k_cache", k_cache), ("v_cache", v_cache)):
                    setattr(entry, field, _pointer(tensor))
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
