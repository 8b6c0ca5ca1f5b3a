"""Builds cpu_gemv.c (float, int8 and int4 weights), cpu_ops.c and cpu_decode.c for this machine at first use
and calls them through ctypes.

The library is compiled with the system C compiler (`-O3 -march=native -fopenmp`) into the tgi-py
cache (TGI_PY_CACHE, default ~/.cache/tgi-py; the temporary directory where that is read-only) under
a name that hashes the sources, the compiler and the CPU's flags, so a cache shared between machines
never hands one CPU another's build. It links the OpenMP runtime that torch has already loaded (same
soname), so its threads are torch's threads.

Without a compiler, or with TGI_PY_CPU_KERNELS=0, `load()` gives None and the model uses torch alone.
TGI_PY_CPU_KERNELS=force uses them even on a CPU without AVX-512, where the portable build is slower
than torch (for tests and comparisons). Where the CPU has AVX512-VNNI the int8 / int4 row kernels (1-4
input rows) quantize their input rows to int8 in blocks of 32 and multiply in integers (cpu_gemv.c);
TGI_PY_INT8_ACTIVATIONS=0 keeps them in float32 (for comparisons).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger("shard.kernels")
SOURCES = tuple(Path(__file__).with_name(name) for name in ("cpu_gemv.c", "cpu_ops.c", "cpu_decode.c"))
HEADER = Path(__file__).with_name("bf16.h")  # included by both: part of the build's cache key
DISABLE_ENV = "TGI_PY_CPU_KERNELS"
FEATURE_AVX512 = 1
FEATURE_AVX512_BF16 = 2
FEATURE_INT8_ACTIVATIONS = 8
INT8_ACTIVATIONS_ENV = "TGI_PY_INT8_ACTIVATIONS"


def cache_dir() -> Path:
    configured = os.environ.get("TGI_PY_CACHE")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "tgi-py"
    return root / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def build(compiler: str, target: Path | None = None, march: str = "native", directory: Path | None = None) -> Path:
    """Compile the library (or reuse the cached build) and return its path."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    parts = [source.read_text() for source in (*SOURCES, HEADER)] + [version, march, _cpu_flags()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    target = target or (directory or cache_dir()) / f"tgi_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename: ranks starting together never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, "-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", "-o", tmp,
             *map(str, SOURCES), "-lm"],
            capture_output=True, text=True, check=True,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class DecodeLayer(ctypes.Structure):
    """One decoder layer's tensors for decode_layers (struct decode_layer in cpu_decode.c)."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "input_norm", "qkv", "qkv_bias", "o_proj", "o_bias", "post_norm", "gate_up", "gate_up_bias", "down",
        "down_bias", "k_cache", "v_cache", "qkv_scales", "o_scales", "gate_up_scales", "down_scales")]


class DecodeStep(ctypes.Structure):
    """Dimensions, inputs and scratch of one decode step (struct decode_step in cpu_decode.c)."""

    _fields_ = [(name, ctypes.c_int) for name in (
        "batch", "hidden", "num_q", "num_kv", "head_dim", "intermediate", "block_size", "max_blocks", "bf16",
        "threads")] + [
        ("eps", ctypes.c_float), ("scale", ctypes.c_float)] + [(name, ctypes.c_void_p) for name in (
            "cos", "sin", "slots", "block_tables", "lengths", "h", "qkv", "attn", "gate_up", "act")] + [
        ("quant", ctypes.c_int)]


@dataclass(frozen=True)
class CpuKernels:
    library: ctypes.CDLL
    features: int
    forced: bool = False

    @property
    def has_avx512(self) -> bool:
        return bool(self.features & FEATURE_AVX512)

    @property
    def int8_activations(self) -> bool:
        """Whether this build's int8 / int4 row kernels quantize their 1-4 input rows to int8 (VNNI)."""
        return bool(self.features & FEATURE_INT8_ACTIVATIONS)

    def set_int8_activations(self, on: bool) -> None:
        """Turns the int8-activation row kernels on or off (process-wide, for this library)."""
        self.library.set_int8_activations(int(on))

    @property
    def preferred(self) -> bool:
        """Whether the model should use these kernels rather than torch on this CPU."""
        return self.has_avx512 or self.forced

    def preferred_max_rows(self, dtype: torch.dtype) -> int:
        """Up to how many input rows these kernels beat torch's BLAS for `dtype` (0: never).

        Measured on a 2-core AVX-512 (BF16) EPYC over SmolLM2's matrices: fp32 faster than MKL at every
        batch up to 32 (1.5x at 1, 1.4x at 16); bf16 faster than oneDNN at every batch up to 32 (2x at 1,
        1.4x at 16, 1.1x at 32). Without AVX-512 the portable build is slower than torch, so it is never
        preferred.
        """
        if not self.preferred:
            return 0
        return {torch.float32: 32, torch.bfloat16: 32}.get(dtype, 0)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, K] @ weight[N, K]^T + bias: what F.linear computes, for float32 or bfloat16 CPU tensors."""
        if x.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
            raise TypeError(f"dtypes differ: x {x.dtype}, weight {weight.dtype}")
        function = {torch.float32: self.library.gemv_f32, torch.bfloat16: self.library.gemv_bf16}[weight.dtype]
        x = x.contiguous()
        rows, k = x.shape
        n = weight.shape[0]
        if weight.shape[1] != k or not weight.is_contiguous():
            raise ValueError(f"x {tuple(x.shape)} does not match a contiguous weight {tuple(weight.shape)}")
        out = torch.empty((rows, n), dtype=x.dtype)
        function(x.data_ptr(), weight.data_ptr(), bias.data_ptr() if bias is not None else None, out.data_ptr(),
                 rows, n, k)
        return out

    def linear_q8(self, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, K] @ (scales[:, None] * weight)^T + bias, weight int8 [N, K], scales float32 [N] (cpu_gemv.c);
        x, bias and the result float32 or bfloat16."""
        x = x.contiguous()
        rows, k = x.shape
        n = weight.shape[0]
        if weight.dtype != torch.int8 or weight.shape[1] != k or not weight.is_contiguous():
            raise ValueError(f"x {tuple(x.shape)} does not match a contiguous int8 weight {tuple(weight.shape)}")
        assert scales.dtype == torch.float32 and scales.shape == (n,) and scales.is_contiguous()
        _check_bias(x, bias, n)
        out = torch.empty((rows, n), dtype=x.dtype)
        self.library.gemv_q8(x.data_ptr(), weight.data_ptr(), scales.data_ptr(),
                             bias.data_ptr() if bias is not None else None, out.data_ptr(), rows, n, k, _is_bf16(x))
        return out

    def linear_q4(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, K] @ W^T + bias, W int4: uint8 [N, ceil(K / 32) * 20], each row its groups' nibbles then their
        fp16 (scale, min) pairs (GGUF Q4_1's blocks; cpu_gemv.c)."""
        x = x.contiguous()
        rows, k = x.shape
        n = weight.shape[0]
        if weight.dtype != torch.uint8 or weight.shape[1] != q4_row_bytes(k) or not weight.is_contiguous():
            raise ValueError(f"x {tuple(x.shape)} does not match contiguous int4 blocks {tuple(weight.shape)}")
        _check_bias(x, bias, n)
        out = torch.empty((rows, n), dtype=x.dtype)
        self.library.gemv_q4(x.data_ptr(), weight.data_ptr(), bias.data_ptr() if bias is not None else None,
                             out.data_ptr(), rows, n, k, _is_bf16(x))
        return out

    def dequantize_q8(self, weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(weight.shape, dtype=dtype)
        assert weight.dtype == torch.int8 and weight.is_contiguous() and scales.dtype == torch.float32
        self.library.dequantize_q8(weight.data_ptr(), scales.data_ptr(), out.data_ptr(), weight.shape[0],
                                   weight.shape[1], _is_bf16(out))
        return out

    def dequantize_q4(self, weight: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
        assert weight.dtype == torch.uint8 and weight.is_contiguous() and weight.shape[1] == q4_row_bytes(k)
        out = torch.empty((weight.shape[0], k), dtype=dtype)
        self.library.dequantize_q4(weight.data_ptr(), out.data_ptr(), weight.shape[0], k, _is_bf16(out))
        return out

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        self.library.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps,
                              _is_bf16(x))
        return out

    def add_rms_norm_(self, x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x += delta in place (x contiguous), then rms_norm(x) as a new tensor."""
        assert x.is_contiguous() and x.dtype == delta.dtype
        delta = delta.contiguous()
        out = torch.empty_like(x)
        self.library.add_rms_norm(x.data_ptr(), delta.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0],
                                  x.shape[1], eps, _is_bf16(x))
        return out

    def rotate_and_store_(self, qkv: torch.Tensor, num_q: int, num_kv: int, head_dim: int, cos: torch.Tensor,
                          sin: torch.Tensor, slots: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor) -> None:
        """Rotates the q and k heads of the contiguous rows [q | k | v] in place and stores k, v at `slots`."""
        assert qkv.is_contiguous() and qkv.shape[1] == (num_q + 2 * num_kv) * head_dim
        assert cos.dtype == torch.float32 and cos.is_contiguous() and sin.is_contiguous()
        assert slots.dtype == torch.int64 and k_cache.is_contiguous() and v_cache.is_contiguous()
        assert k_cache.dtype == qkv.dtype == v_cache.dtype
        self.library.rotate_and_store(qkv.data_ptr(), qkv.shape[0], num_q, num_kv, head_dim, cos.data_ptr(),
                                      sin.data_ptr(), slots.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                      _is_bf16(qkv))

    def paged_attention(self, q: torch.Tensor, num_q: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_tables: torch.Tensor, lengths: torch.Tensor, block_size: int) -> torch.Tensor:
        """Row b of q (heads from column 0; a decode or a prompt token) against its `lengths[b]` cached positions.

        Caches [slots, num_kv, head_dim]; block_tables int32 [batch, max_blocks]; lengths int32 [batch]."""
        batch = q.shape[0]
        _, num_kv, head_dim = k_cache.shape
        if not paged_attention_fits(num_q, num_kv, head_dim):
            raise ValueError(f"paged_attention supports up to 16 queries per KV head of up to 256 dims, "
                             f"got {num_q} / {num_kv} heads of {head_dim}")
        assert q.stride(-1) == 1 and (q.dim() == 2 or q.stride(1) == head_dim)
        assert block_tables.dtype == torch.int32 and lengths.dtype == torch.int32
        assert block_tables.is_contiguous() and lengths.is_contiguous() and k_cache.is_contiguous()
        out = torch.empty((batch, num_q * head_dim), dtype=q.dtype)
        self.library.paged_attention(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
                                     block_tables.data_ptr(), block_tables.shape[1], lengths.data_ptr(), batch,
                                     num_q, num_kv, head_dim, block_size, head_dim ** -0.5, out.data_ptr(),
                                     _is_bf16(q))
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for rows of [gate | up]."""
        gate_up = gate_up.contiguous()
        width = gate_up.shape[1] // 2
        out = torch.empty((gate_up.shape[0], width), dtype=gate_up.dtype)
        self.library.silu_mul(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], width, _is_bf16(gate_up))
        return out

    def decode_layers(self, layers: ctypes.Array, step: DecodeStep, x: torch.Tensor, delta: torch.Tensor) -> None:
        """Every decoder layer of a one-rank step in one call (cpu_decode.c): x (contiguous, the
        embeddings) becomes the residual stream and delta the last layer's MLP output, both in place."""
        assert x.is_contiguous() and delta.is_contiguous() and x.shape == delta.shape
        self.library.decode_layers(layers, len(layers), ctypes.byref(step), x.data_ptr(), delta.data_ptr())


Q4_GROUP = 32  # weights per int4 block
Q4_BLOCK_BYTES = 20  # per group: 16 bytes of nibbles, fp16 scale and minimum (GGUF's block_q4_1)


def q4_row_bytes(k: int) -> int:
    return -(-k // Q4_GROUP) * Q4_BLOCK_BYTES


def _check_bias(x: torch.Tensor, bias: torch.Tensor | None, n: int) -> None:
    if bias is not None and (bias.dtype != x.dtype or bias.shape != (n,) or not bias.is_contiguous()):
        raise TypeError(f"bias {bias.dtype} {tuple(bias.shape)} does not match x {x.dtype} and {n} outputs")


def paged_attention_fits(num_q: int, num_kv: int, head_dim: int) -> bool:
    """Whether paged_attention takes these heads: its per-task buffers hold up to 16 queries of 256 dims."""
    return num_q % num_kv == 0 and num_q // num_kv <= 16 and head_dim <= 256


def _is_bf16(tensor: torch.Tensor) -> int:
    if tensor.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"the CPU kernels take float32 or bfloat16, not {tensor.dtype}")
    return int(tensor.dtype == torch.bfloat16)


def _declare(library: ctypes.CDLL, name: str, *argtypes: object) -> None:
    function = getattr(library, name)
    function.argtypes = list(argtypes)
    function.restype = None


def _open(path: Path) -> CpuKernels:
    library = ctypes.CDLL(str(path))
    ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    for name in ("gemv_f32", "gemv_bf16"):
        _declare(library, name, ptr, ptr, ptr, ptr, i32, i32, i32)
    _declare(library, "gemv_q8", ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32)
    _declare(library, "gemv_q4", ptr, ptr, ptr, ptr, i32, i32, i32, i32)
    _declare(library, "dequantize_q8", ptr, ptr, ptr, i32, i32, i32)
    _declare(library, "dequantize_q4", ptr, ptr, i32, i32, i32)
    _declare(library, "rms_norm", ptr, ptr, ptr, i32, i32, f32, i32)
    _declare(library, "add_rms_norm", ptr, ptr, ptr, ptr, i32, i32, f32, i32)
    _declare(library, "rotate_and_store", ptr, i32, i32, i32, i32, ptr, ptr, ptr, ptr, ptr, i32)
    _declare(library, "paged_attention", ptr, i64, ptr, ptr, ptr, i32, ptr, i32, i32, i32, i32, i32, f32, ptr, i32)
    _declare(library, "silu_mul", ptr, ptr, i32, i32, i32)
    _declare(library, "decode_layers", ctypes.POINTER(DecodeLayer), i32, ctypes.POINTER(DecodeStep), ptr, ptr)
    _declare(library, "set_int8_activations", i32)
    library.kernel_features.restype = ctypes.c_int
    return CpuKernels(library, library.kernel_features())


@cache
def load() -> CpuKernels | None:
    """The kernels built for this CPU, or None where they cannot be built or are turned off."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        log.info("CPU kernels off (%s=0): torch only", DISABLE_ENV)
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: the small-batch CPU kernels are off, decoding uses torch alone")
        return None
    try:
        try:
            path = build(compiler)
        except PermissionError:
            # a read-only cache (the container image's): build where this process may write
            path = build(compiler, directory=Path(tempfile.gettempdir()) / "tgi-py-kernels")
        kernels = _open(path)
        kernels = CpuKernels(kernels.library, kernels.features, forced=os.environ.get(DISABLE_ENV) == "force")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("building the CPU kernels failed, decoding uses torch alone: %s", detail.strip()[-2000:])
        return None
    if kernels.int8_activations and os.environ.get(INT8_ACTIVATIONS_ENV) == "0":
        kernels.set_int8_activations(False)
        kernels = CpuKernels(kernels.library, kernels.features & ~FEATURE_INT8_ACTIVATIONS, kernels.forced)
    log.info("CPU kernels loaded (AVX-512: %s, AVX512-BF16: %s, int8 activations: %s)", kernels.has_avx512,
             bool(kernels.features & FEATURE_AVX512_BF16), kernels.int8_activations)
    return kernels
