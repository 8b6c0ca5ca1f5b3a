"""shard/kernels against the torch code they replace, in the build for this CPU and in the portable one.

The portable build (-march=x86-64: no AVX2, no AVX-512) runs the generic C paths, so both paths are
checked on every machine, whichever one the model picks here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shard.kernels import cpu
from shard.kv_cache import context_slots, padded_block_tables
from shard.models.attention import AttentionInputs
from shard.models.layers import Rotary, apply_rotary, rms_norm
from shard.models.ops import KernelOps, TorchOps

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module", params=["native", "portable"])
def kernels(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> cpu.CpuKernels:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "the CPU kernels need a C compiler (cc or gcc) on PATH"
    march = "native" if request.param == "native" else "x86-64"
    path = cpu.build(compiler, Path(tmp_path_factory.mktemp("kernels")) / f"{march}.so", march=march)
    library = cpu._open(path)
    if request.param == "portable":
        assert not library.has_avx512
    return library


def ulps(dtype: torch.dtype) -> float:
    return 2 ** -7 if dtype == torch.bfloat16 else 2 ** -20


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, steps: float = 2) -> None:
    scale = want.float().abs().max().item() or 1.0
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= steps * ulps(dtype) * scale, f"max difference {diff} at scale {scale}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 33])
@pytest.mark.parametrize("n,k", [(1, 16), (5, 33), (64, 576), (130, 40), (7, 1536)])
def test_linear_matches_torch(kernels: cpu.CpuKernels, dtype: torch.dtype, rows: int, n: int, k: int) -> None:
    torch.manual_seed(rows * 1000 + n + k)
    x, w, b = torch.randn(rows, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
    for bias in (None, b):
        # the reference in float32 (bf16 inputs are exact in it), rounded once as the kernel rounds
        want = F.linear(x.float(), w.float(), None if bias is None else bias.float()).to(dtype)
        assert_close(kernels.linear(x, w, bias), want, dtype, steps=4 if dtype == torch.bfloat16 else 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_of_no_rows_is_empty(kernels: cpu.CpuKernels, dtype: torch.dtype) -> None:
    # a prompt chunk that wants no logits multiplies zero rows by the head
    out = kernels.linear(torch.empty(0, 576, dtype=dtype), torch.randn(64, 576).to(dtype))
    assert out.shape == (0, 64)


def test_linear_refuses_mismatched_shapes_and_dtypes(kernels: cpu.CpuKernels) -> None:
    with pytest.raises(ValueError):
        kernels.linear(torch.randn(2, 8), torch.randn(4, 9))
    with pytest.raises(TypeError):
        kernels.linear(torch.randn(2, 8), torch.randn(4, 8).bfloat16())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_rms_norm_silu_mul_and_rotation_match_the_torch_ops(kernels: cpu.CpuKernels, dtype: torch.dtype,
                                                          rows: int) -> None:
    torch.manual_seed(rows)
    x, weight = torch.randn(rows, 96).to(dtype), (torch.rand(96) + 0.5).to(dtype)
    assert_close(kernels.rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-5), dtype)

    gate_up = (torch.randn(rows, 2 * 80) * 4).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert_close(kernels.silu_mul(gate_up), F.silu(gate) * up, dtype)

    num_q, num_kv, head_dim = 3, 2, 32
    rotary = Rotary(head_dim, 10000.0, None, torch.device("cpu"))
    positions = torch.arange(rows) * 7 + 3
    qkv = torch.randn(rows, (num_q + 2 * num_kv) * head_dim).to(dtype)
    cos, sin = rotary.cos_sin(positions, dtype)
    rotated_heads = (num_q + num_kv) * head_dim
    want = apply_rotary(qkv[:, :rotated_heads].reshape(rows, num_q + num_kv, head_dim), cos, sin).reshape(rows, -1)
    freqs = positions.float()[:, None] * rotary.inv_freq[None, :]
    got = qkv.clone()
    k_cache, v_cache = (torch.zeros(rows, num_kv, head_dim, dtype=dtype) for _ in range(2))
    kernels.rotate_and_store_(got, num_q, num_kv, head_dim, freqs.cos(), freqs.sin(), torch.arange(rows),
                              k_cache, v_cache)
    assert_close(got[:, :rotated_heads], want, dtype)
    assert torch.equal(got[:, rotated_heads:], qkv[:, rotated_heads:])  # values are not rotated


@pytest.mark.parametrize("dtype", DTYPES)
# SIMD specialisations (head_dim 64 or 128, 1-4 queries per KV head) and the generic loop (the others;
# 16 queries of 300 positions also overflow its stack buffer for scores)
@pytest.mark.parametrize("num_q,num_kv,head_dim", [(9, 3, 64), (4, 4, 64), (6, 3, 128), (8, 2, 128), (4, 4, 32),
                                                   (6, 1, 24), (16, 1, 32)])
def test_paged_attention_matches_gathered_attention(kernels: cpu.CpuKernels, dtype: torch.dtype, num_q: int,
                                                    num_kv: int, head_dim: int) -> None:
    torch.manual_seed(num_q + head_dim)
    block_size, num_blocks = 4, 100
    k_cache = torch.randn(num_blocks * block_size, num_kv, head_dim).to(dtype)
    v_cache = torch.randn(num_blocks * block_size, num_kv, head_dim).to(dtype)
    lengths = [1, 13, 37, 4, 300]
    # scattered, non-contiguous blocks per sequence, as the allocator hands them out after churn
    order = torch.randperm(num_blocks).tolist()
    tables = [order[0:1], order[1:5], order[5:15], order[15:16], order[16:91]]
    q = torch.randn(len(lengths), num_q, head_dim).to(dtype)
    attn = AttentionInputs(torch.zeros(0, dtype=torch.long), paged_rows=len(lengths), block_size=block_size)
    attn.context_slots, attn.context_mask = context_slots(tables, lengths, block_size, torch.device("cpu"))
    attn.block_tables, attn.context_lengths = padded_block_tables(tables, lengths, block_size, torch.device("cpu"))
    want = TorchOps().paged_attention(q, attn, k_cache, v_cache)
    got = kernels.paged_attention(q, num_q, k_cache, v_cache, attn.block_tables, attn.context_lengths, block_size)
    # bf16: torch rounds the probabilities to bf16 before weighting the values, the kernel does not
    assert_close(got, want, dtype, steps=8 if dtype == torch.bfloat16 else 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_ops_rotate_and_store_rows_into_their_slots(kernels: cpu.CpuKernels, dtype: torch.dtype) -> None:
    qkv = torch.randn(3, 4 * 8 + 2 * 2 * 8).to(dtype)
    slots = torch.tensor([7, 0, 12])
    want_k, want_v = torch.zeros(16, 2, 8, dtype=dtype), torch.zeros(16, 2, 8, dtype=dtype)
    cos, sin = torch.rand(3, 4), torch.rand(3, 4)
    tables = (torch.cat((cos, cos), -1).to(dtype)[:, None, :], torch.cat((sin, sin), -1).to(dtype)[:, None, :])
    want = TorchOps().qkv_to_cache(qkv.clone(), 4, 2, 8, tables, slots, want_k, want_v)
    got_k, got_v = torch.zeros_like(want_k), torch.zeros_like(want_v)
    got = KernelOps(kernels).qkv_to_cache(qkv.clone(), 4, 2, 8, (cos, sin), slots, got_k, got_v)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, dtype)
    assert_close(got_k, want_k, dtype)  # rotated keys
    assert torch.equal(got_v, want_v)  # values are copied as they are


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_adds_in_place_and_normalises(kernels: cpu.CpuKernels, dtype: torch.dtype) -> None:
    x, delta, weight = torch.randn(5, 64).to(dtype), torch.randn(5, 64).to(dtype), (torch.rand(64) + 0.5).to(dtype)
    want_x, want_h = TorchOps().add_rms_norm(x, delta, weight, 1e-6)
    got_x, got_h = KernelOps(kernels).add_rms_norm(x.clone(), delta, weight, 1e-6)
    assert torch.equal(got_x, want_x)
    assert_close(got_h, want_h, dtype)


def test_load_is_off_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.DISABLE_ENV, "0")
    cpu.load.cache_clear()
    try:
        assert cpu.load() is None
    finally:
        cpu.load.cache_clear()


def test_the_installed_package_ships_the_kernel_sources(tmp_path: Path) -> None:
    # a non-editable install (the Docker image's) compiles from these files at start-up
    # from a copy without earlier build output: a stale build/ or egg-info can add files the package
    # configuration itself would leave out
    source = tmp_path / "src"
    shutil.copytree(Path(cpu.__file__).parents[2], source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "node_modules", "__pycache__", ".*_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tgi_py-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {f"shard/kernels/{path.name}" for path in (*cpu.SOURCES, cpu.HEADER)} <= shipped
