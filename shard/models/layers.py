"""Building blocks of the tensor-parallel Llama family: norms, rotary embedding, parallel embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shard.distributed import Distributed
from shard.kernels import cpu as cpu_kernels
from shard.quantization import QuantizedLinear


class Linear:
    """y = x W^T + b over a weight stored [out, in] as in the checkpoint.

    On the CPU, batches of up to a few dozen rows (decoding) go through shard/kernels/cpu_gemv.c, which
    streams the weights at close to memory bandwidth; larger batches (prefill) through torch's BLAS.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.kernels = cpu_kernels.load() if weight.device.type == "cpu" else None
        self.kernel_max_rows = self.kernels.preferred_max_rows(weight.dtype) if self.kernels else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.kernel_max_rows:
            assert self.kernels is not None
            return self.kernels.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None, quantize: str | None = None,
           row_absmax: torch.Tensor | None = None) -> Linear | QuantizedLinear:
    """A Linear, or with `quantize` (int8, int4) a QuantizedLinear of the same weight (shard/quantization.py)."""
    if quantize is None:
        return Linear(weight, bias)
    return QuantizedLinear(weight, bias, quantize, row_absmax)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Computed in float32 and cast back, as the reference implementation does, so greedy ids agree.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(is_mid, mid, scaled)
    raise ValueError(f"rope scaling {kind!r} is not supported by the Llama-family model code")


class Rotary:
    def __init__(self, head_dim: int, theta: float, scaling: dict | None, device: torch.device) -> None:
        self.inv_freq = rope_inv_freq(head_dim, theta, scaling).to(device)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        # [T, 1, head_dim]: broadcast over heads
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class VocabParallelEmbedding:
    """Each rank holds a slice of vocabulary rows; out-of-slice ids contribute zeros, then all-reduce."""

    def __init__(self, weight: torch.Tensor, start: int, dist: Distributed) -> None:
        self.weight = weight
        self.start = start
        self.dist = dist

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.dist.world_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside[:, None], 0.0)
        return self.dist.all_reduce_sum(out)


class VocabParallelHead:
    """lm_head split by vocabulary rows with an all-gather of the logits.

    Slices are padded to equal widths on the logits (not on the weight, which may be shared with the
    embedding) so that all-gather sees the same shape on every rank.
    """

    def __init__(self, weight: torch.Tensor, padded_rows: int, vocab_size: int, dist: Distributed,
                 quantize: str | None = None) -> None:
        self.linear = linear(weight, quantize=quantize)
        self.padding = padded_rows - weight.shape[0]
        self.vocab_size = vocab_size
        self.dist = dist

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.linear(hidden)
        if self.dist.world_size == 1:
            return logits
        if self.padding:
            logits = F.pad(logits, (0, self.padding))
        return self.dist.all_gather_last_dim(logits)[:, : self.vocab_size]
