"""Weight-only quantization at load (`--quantize int8 | int4`; common/quantization.py names the values).

A CPU decode step at small batches is bound by reading every weight once (docs/benchmarks.md): fewer
bytes per weight is a faster step. The checkpoint's float weights are quantized here as they are loaded,
and the C kernels (shard/kernels/cpu_gemv.c) dequantize them in registers. Activations stay in the
model's dtype, except in the row kernels (1-4 input rows: decode steps) on a CPU with AVX512-VNNI,
which quantize each input row to int8 in blocks of 32 (`quantize_activations` is the reference) and
multiply in integers, as llama.cpp does with its Q8_1 activations.

- int8: symmetric, one float32 scale per output channel (weight row): w ~ scale[n] * q, q in [-127, 127].
  A row-parallel matrix (o_proj, down_proj under tensor parallelism) is split along its input dimension:
  every rank then uses the scale of the whole row, so each rank's slice is quantized exactly as one
  rank would quantize it.
- int4: groups of 32 consecutive weights of a row, each with an fp16 scale d and minimum m:
  w ~ d * q + m, q in [0, 15]: GGUF's Q4_1 blocks (d, m and 16 bytes of nibbles, the low nibbles the
  group's weights 0-15, the high ones 16-31), 5 bits per weight. A row stores its groups' nibbles first
  and their (d, m) pairs after them, so that the kernel widens a row's scales 16 at a time. The scale and
  minimum are refined by least squares on the chosen levels (a few passes), which lowers the error of
  plain min/max scaling. Under tensor parallelism a row-parallel slice must start and end on a group
  boundary (or the row's end), else its groups would differ from one rank's: such a split is refused.

Matrices of the Llama family's layers and the LM head are quantized (the head in int8 under int4 too:
HEAD_QUANTIZATION); embeddings and norms are not (the embedding is read a row per token). Prompt
chunks of more than QUANTIZED_KERNEL_MAX_ROWS rows dequantize the matrix and use torch's matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shard.kernels import cpu as cpu_kernels

GROUP = cpu_kernels.Q4_GROUP
BLOCK_BYTES = cpu_kernels.Q4_BLOCK_BYTES
KINDS = ("int8", "int4")
# The LM head's quantization under each --quantize. The head is the most sensitive matrix: on
# bench/perplexity.py's text, SmolLM2 with every matrix in int4 lost 7.3% perplexity, with its layers in
# int4 and the head (tied with the embeddings) in int8 -0.2% (within noise of bf16), for 11 MB more
# per step.
HEAD_QUANTIZATION = {"int8": "int8", "int4": "int8"}
# Up to this many input rows the C kernels (in registers up to 4 rows, then through a per-thread
# dequantized tile) beat dequantizing the whole matrix for torch's matmul (bench/quant_linear.py over
# SmolLM2's matrices, bf16, 2 cores; ms for all five: int8 128 rows 38.6 vs 41.6, 192 rows 55.1 vs 54.6;
# int4 192 rows 45.6 vs 53.8, 256 rows 58.4 vs 64.1).
QUANTIZED_KERNEL_MAX_ROWS = {"int8": 160, "int4": 256}
INT4_REFINE_PASSES = 3


def quantize_int8(weight: torch.Tensor, row_absmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], scale float32 [N]) with weight ~ scale[:, None] * q. `row_absmax`: the rows' largest
    magnitudes when `weight` is only a slice of its rows' columns (tensor parallelism)."""
    w = weight.float()
    amax = w.abs().amax(dim=1) if row_absmax is None else row_absmax.float()
    scale = amax / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """The float32 values the int8-activation row kernels multiply instead of x [B, K]: each block of 32
    along K as round(x * 127 / absmax) * absmax / 127 (the reference for the kernels, and for measuring
    what it costs)."""
    rows, k = x.shape
    padded = F.pad(x.float(), (0, -k % GROUP)).reshape(rows, -1, GROUP)
    amax = padded.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(padded * inverse)
    return (q * (amax / 127.0)).reshape(rows, -1)[:, :k]


def _levels(groups: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    inverse = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    return torch.round((groups - m[..., None]) * inverse[..., None]).clamp_(0, 15)


def quantize_int4(weight: torch.Tensor, refine_passes: int = INT4_REFINE_PASSES) -> torch.Tensor:
    """Q4_1 blocks of the rows, uint8 [N, ceil(K / 32) * 20]."""
    n, k = weight.shape
    groups_per_row = -(-k // GROUP)
    w = weight.float()
    if k % GROUP:  # the last group is padded with its own last weight: the padding moves neither min nor max
        w = torch.cat([w, w[:, -1:].expand(n, groups_per_row * GROUP - k)], dim=1)
    groups = w.view(n, groups_per_row, GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    d, m = (high - low) / 15.0, low
    best_d, best_m = d, m
    q = _levels(groups, d, m)
    best_error = (q * d[..., None] + m[..., None] - groups).square().sum(-1)
    for _ in range(refine_passes):
        # least squares for d and m given the levels q, then the levels again for them
        count = float(GROUP)
        sq, sqq = q.sum(-1), q.square().sum(-1)
        sw, sqw = groups.sum(-1), (q * groups).sum(-1)
        det = count * sqq - sq * sq
        ok = det > 0
        safe = torch.where(ok, det, torch.ones_like(det))
        d = torch.where(ok, (count * sqw - sq * sw) / safe, best_d)
        m = torch.where(ok, (sw - d * sq) / count, best_m)
        d = torch.where(d > 0, d, best_d)
        q = _levels(groups, d, m)
        error = (q * d[..., None] + m[..., None] - groups).square().sum(-1)
        better = error < best_error
        best_d, best_m = torch.where(better, d, best_d), torch.where(better, m, best_m)
        best_error = torch.minimum(error, best_error)
        d, m = best_d, best_m
        q = _levels(groups, d, m)
    # the levels are chosen for the values the kernel will read back: d and m rounded to fp16
    d16, m16 = best_d.to(torch.float16), best_m.to(torch.float16)
    q = _levels(groups, d16.float(), m16.float()).to(torch.uint8)
    nibbles = (q[..., :16] | (q[..., 16:] << 4)).reshape(n, groups_per_row * 16)
    scales = torch.stack([d16, m16], dim=-1).view(torch.uint8).reshape(n, groups_per_row * 4)  # fp16 (d, m) pairs
    return torch.cat([nibbles, scales], dim=1).contiguous()


def dequantize_int4(blocks: torch.Tensor, k: int) -> torch.Tensor:
    """The float32 [N, K] weight that `quantize_int4` blocks stand for (the reference for the kernels)."""
    nibbles, d, m = unpack_int4(blocks)
    q = torch.cat([nibbles & 15, nibbles >> 4], dim=-1).float()
    return (q * d[..., None].float() + m[..., None].float()).reshape(blocks.shape[0], -1)[:, :k]


def unpack_int4(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nibbles uint8 [N, G, 16], d fp16 [N, G], m fp16 [N, G]) of `quantize_int4` rows: the content of
    GGUF Q4_1 blocks (each row holds its G groups' nibbles, then their (d, m) pairs)."""
    n, groups = blocks.shape[0], blocks.shape[1] // BLOCK_BYTES
    nibbles = blocks[:, : groups * 16].reshape(n, groups, 16)
    pairs = blocks[:, groups * 16:].contiguous().view(torch.float16).reshape(n, groups, 2)
    return nibbles, pairs[..., 0], pairs[..., 1]


def check_row_parallel_split(kind: str | None, name: str, start: int, end: int, total: int, rank: int,
                             world_size: int) -> None:
    """int4 groups run along the input dimension: a rank's slice of it must begin and end on a group
    boundary (or at the end of the row), so that its groups are those one rank would make."""
    if kind != "int4" or world_size == 1:
        return
    if start % GROUP or (end % GROUP and end != total):
        raise ValueError(
            f"--quantize int4 with --num-shard {world_size}: rank {rank}'s slice [{start}, {end}) of the {total} "
            f"input columns of {name} does not begin and end on a {GROUP}-weight group boundary, so its int4 "
            f"groups would straddle two ranks. Use a --num-shard that splits the attention heads and the MLP "
            f"at multiples of {GROUP} columns, or --quantize int8.")


class QuantizedLinear:
    """y = x W^T + b with W quantized at construction (`kind` int8 or int4); the model-dtype float weight
    given is not kept. `weight` (and `scales` for int8) are what the C kernels read."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str,
                 row_absmax: torch.Tensor | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown quantization {kind!r}")
        self.kind = kind
        self.dtype = weight.dtype
        self.out_features, self.in_features = weight.shape
        self.scales: torch.Tensor | None
        if kind == "int8":
            self.weight, self.scales = quantize_int8(weight, row_absmax)
        else:
            self.weight, self.scales = quantize_int4(weight), None
        self.bias = bias
        self._attach_kernels(weight.device)

    @classmethod
    def from_int4_rows(cls, rows: torch.Tensor, in_features: int, bias: torch.Tensor | None,
                       dtype: torch.dtype) -> QuantizedLinear:
        """An int4 layer of rows already quantized (`quantize_int4`'s layout: shard/gguf_blocks.py)."""
        if rows.dtype != torch.uint8 or rows.shape[1] != -(-in_features // GROUP) * BLOCK_BYTES:
            raise ValueError(f"int4 rows {tuple(rows.shape)} {rows.dtype} do not hold {in_features} inputs")
        layer = cls.__new__(cls)
        layer.kind, layer.dtype = "int4", dtype
        layer.out_features, layer.in_features = rows.shape[0], in_features
        layer.weight, layer.scales, layer.bias = rows.contiguous(), None, bias
        layer._attach_kernels(rows.device)
        return layer

    def _attach_kernels(self, device: torch.device) -> None:
        cpu = device.type == "cpu" and self.dtype in (torch.float32, torch.bfloat16)
        self.kernels = cpu_kernels.load() if cpu else None
        # Unlike the float kernels these are used without AVX-512 too: the alternative dequantizes the
        # whole matrix at every call.
        self.kernel_max_rows = QUANTIZED_KERNEL_MAX_ROWS[self.kind] if self.kernels is not None else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scales) if t is not None)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.kernels is not None and dtype in (torch.float32, torch.bfloat16):
            if self.kind == "int8":
                assert self.scales is not None
                return self.kernels.dequantize_q8(self.weight, self.scales, dtype)
            return self.kernels.dequantize_q4(self.weight, self.in_features, dtype)
        if self.kind == "int8":
            assert self.scales is not None
            return dequantize_int8(self.weight, self.scales).to(dtype)
        return dequantize_int4(self.weight, self.in_features).to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.kernel_max_rows and x.dtype == self.dtype:
            assert self.kernels is not None
            if self.kind == "int8":
                assert self.scales is not None
                return self.kernels.linear_q8(x, self.weight, self.scales, self.bias)
            return self.kernels.linear_q4(x, self.weight, self.bias)
        return F.linear(x, self.dequantize(x.dtype), self.bias)
