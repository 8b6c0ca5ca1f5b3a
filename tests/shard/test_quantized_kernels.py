"""Weight-only int8 / int4 (shard/quantization.py) and their GEMV kernels (cpu_gemv.c) against torch.

Each kernel is checked against F.linear over the dequantized weight, at every row count from 0 to 33
(1-4: dequantized in registers, or with VNNI multiplied as integers against int8-quantized input rows;
more: through the dequantized tile; past 4 and 32 the block edges), in the build for this CPU and in the
portable one (-march=x86-64: the GCC-vector paths, no AVX-512).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from common.quantization import UnsupportedQuantization, resolve_quantize
from shard.kernels import cpu
from shard.quantization import (
    QUANTIZED_KERNEL_MAX_ROWS,
    QuantizedLinear,
    check_row_parallel_split,
    dequantize_int4,
    dequantize_int8,
    quantize_activations,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)

DTYPES = [torch.float32, torch.bfloat16]
# (N, K): K a multiple of 32, one that leaves a partial int4 group and a partial 16-lane step (40, 33),
# one below a vector (12), and SmolLM2's hidden size
SHAPES = [(7, 40), (5, 33), (13, 12), (38, 64), (20, 576)]


@pytest.fixture(scope="module", params=["native", "portable"])
def kernels(request: pytest.FixtureRequest) -> cpu.CpuKernels:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "the CPU kernels need a C compiler (cc or gcc) on PATH"
    # the tgi-py kernel cache (keyed by the sources, compiler and -march): built once, not per run
    return cpu._open(cpu.build(compiler, march="native" if request.param == "native" else "x86-64"))


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    # bf16: the result is rounded once (2^-8), and above 4 rows the tile holds bf16-rounded weights
    steps = 6 * 2 ** -8 if dtype == torch.bfloat16 else 2 ** -14
    if want.numel() == 0:
        assert got.shape == want.shape
        return
    scale = want.float().abs().max().item() or 1.0
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= steps * scale, f"max difference {diff} at scale {scale}"


def assert_close_within(got: torch.Tensor, want: torch.Tensor, fraction: float) -> None:
    scale = want.float().abs().max().item() or 1.0
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= fraction * scale, f"max difference {diff} at scale {scale}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_linear_matches_torch_at_0_to_33_rows(kernels: cpu.CpuKernels, kind: str, n: int, k: int,
                                                        dtype: torch.dtype) -> None:
    torch.manual_seed(n * 100 + k)
    w = torch.randn(n, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    if kind == "int8":
        q, scales = quantize_int8(w)
        dequantized = dequantize_int8(q, scales)
    else:
        q = quantize_int4(w)
        dequantized = dequantize_int4(q, k)
    for rows in range(34):
        x = torch.randn(rows, k).to(dtype)
        for b in (None, bias) if rows in (1, 5) else (bias,):
            got = kernels.linear_q8(x, q, scales, b) if kind == "int8" else kernels.linear_q4(x, q, b)
            assert got.shape == (rows, n) and got.dtype == dtype
            if kernels.int8_activations and 1 <= rows <= 4:
                # integer products: the float reference over the same int8-quantized activations ...
                assert_close(got, reference(quantize_activations(x).to(dtype), dequantized, b)
                             if dtype == torch.bfloat16 else
                             F.linear(quantize_activations(x), dequantized, b), dtype)
                # ... and within the activations' rounding (half a step of 1/127 of each block's max)
                # of the product of the unquantized ones
                assert_close_within(got, reference(x, dequantized, b), 0.02)
            else:
                assert_close(got, reference(x, dequantized, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernels_dequantize_as_the_reference_does(kernels: cpu.CpuKernels, dtype: torch.dtype) -> None:
    w = torch.randn(9, 72)
    q8, scales = quantize_int8(w)
    assert torch.equal(kernels.dequantize_q8(q8, scales, dtype), dequantize_int8(q8, scales).to(dtype))
    q4 = quantize_int4(w)
    # the kernel's d * q + m is one fused multiply-add: within a float32 rounding of the reference
    torch.testing.assert_close(kernels.dequantize_q4(q4, 72, dtype), dequantize_int4(q4, 72).to(dtype),
                               rtol=2 ** -20 if dtype == torch.float32 else 2 ** -8, atol=1e-6)


def test_quantization_error_is_small_and_int4_refinement_helps() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    q8, scales = quantize_int8(w)
    assert q8.dtype == torch.int8 and scales.shape == (64,)
    error8 = (dequantize_int8(q8, scales) - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()
    plain = dequantize_int4(quantize_int4(w, refine_passes=0), 256)
    refined = dequantize_int4(quantize_int4(w), 256)
    error_plain = (plain - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()
    error4 = (refined - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()
    assert error8 < 0.01 and error4 < 0.1
    assert error4 < error_plain
    assert quantize_int4(w).shape == (64, 8 * 20)  # GGUF Q4_1: 20 bytes per 32 weights


def test_int4_groups_are_gguf_q4_1_blocks() -> None:
    # one group: d, m fp16 (d = range / 15, m = min), nibble byte i = q[i] | q[i + 16] << 4, after the nibbles
    w = torch.arange(32, dtype=torch.float32).view(1, 32) * 0.5 - 3.0
    row = quantize_int4(w, refine_passes=0)
    nibbles, d, m = unpack_int4(row)
    assert m.item() == -3.0 and d.item() == pytest.approx(15.5 / 15, rel=1e-3)
    q = [round((v - m.item()) / d.item()) for v in w[0].tolist()]
    assert nibbles[0, 0].tolist() == [q[i] | q[i + 16] << 4 for i in range(16)]
    assert row[0, 16:18].view(torch.float16).item() == d.item()


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_tensor_parallel_slices_quantize_as_the_whole(kernels: cpu.CpuKernels, kind: str) -> None:
    """Column-parallel slices (rows) keep their rows' scales; row-parallel slices (columns) cut on group
    boundaries with the whole rows' int8 scales: each rank's bytes are the single rank's, and the sum of
    the ranks' partial products is the single rank's product."""
    torch.manual_seed(1)
    n, k, dtype = 24, 128, torch.bfloat16
    w = (torch.randn(n, k) * 0.1).to(dtype)
    x = torch.randn(3, k).to(dtype)
    whole = QuantizedLinear(w, None, kind)
    whole.kernels = kernels
    # column-parallel: rows [0, 10) and [10, 24)
    for start, end in ((0, 10), (10, 24)):
        part = QuantizedLinear(w[start:end].contiguous(), None, kind)
        assert torch.equal(part.weight, whole.weight[start:end])
        if kind == "int8":
            assert torch.equal(part.scales, whole.scales[start:end])
    # row-parallel: columns [0, 64) and [64, 128)
    row_absmax = w.float().abs().amax(dim=1)
    partial = []
    for start, end in ((0, 64), (64, 128)):
        check_row_parallel_split(kind, "w", start, end, k, 0, 2)
        part = QuantizedLinear(w[:, start:end].contiguous(), None, kind, row_absmax)
        part.kernels = kernels
        if kind == "int8":
            assert torch.equal(part.weight, whole.weight[:, start:end])
            assert torch.equal(part.scales, whole.scales)
        else:
            for got, want in zip(unpack_int4(part.weight), unpack_int4(whole.weight), strict=True):
                assert torch.equal(got, want[:, start // 32: end // 32])
        partial.append(part(x[:, start:end]).float())
    torch.testing.assert_close(partial[0] + partial[1], whole(x).float(), rtol=0.02, atol=0.02)


def test_int4_row_parallel_split_off_a_group_boundary_is_refused() -> None:
    check_row_parallel_split("int4", "w", 64, 80, 80, 1, 2)  # ends at the row's end: fine
    check_row_parallel_split("int8", "w", 0, 40, 80, 0, 2)  # int8 has no groups
    with pytest.raises(ValueError, match="group boundary"):
        check_row_parallel_split("int4", "w", 0, 40, 80, 0, 2)
    with pytest.raises(ValueError, match="group boundary"):
        check_row_parallel_split("int4", "w", 40, 80, 80, 1, 2)


def test_quantized_linear_uses_torch_past_the_kernel_rows() -> None:
    torch.manual_seed(2)
    w, x = torch.randn(16, 64).bfloat16(), torch.randn(QUANTIZED_KERNEL_MAX_ROWS["int4"] + 5, 64).bfloat16()
    layer = QuantizedLinear(w, None, "int4")
    want = reference(x, dequantize_int4(layer.weight, 64), None)
    assert_close(layer(x), want, torch.bfloat16)  # dequantized, then torch's matmul
    assert_close(layer(x[:40]), want[:40], torch.bfloat16)  # the kernel


def test_quantize_values() -> None:
    assert resolve_quantize("eetq") == "int8" and resolve_quantize("INT4") == "int4"
    assert resolve_quantize(None) is None and resolve_quantize("none") is None
    for value in ("gptq", "awq", "bitsandbytes", "fp8", "q4_0"):
        with pytest.raises(UnsupportedQuantization, match="supported: int8 .* int4"):
            resolve_quantize(value)
