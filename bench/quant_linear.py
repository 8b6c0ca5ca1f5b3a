"""Where the quantized GEMV kernels stop paying: one SmolLM2 layer's matrices and its LM head, per row count.

    .venv/bin/python -m bench.quant_linear --rows 1,4,8,16,32,64,128,256

For each row count: the float weights (bf16 by default) through QuantizedLinear's kernel (dequantized in
registers up to 4 rows, through a per-thread dequantized tile above) against dequantizing the matrix and
torch's matmul, and the unquantized Linear (the float kernels up to 32 rows, then torch) for scale.
Prints milliseconds per pass over all the matrices (median of --repeat). shard/quantization.py's
QUANTIZED_KERNEL_MAX_ROWS is where the kernel column stops being the faster (int8 ~160, int4 ~256 rows).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# SmolLM2-135M: qkv, o_proj, gate_up, down, LM head (N, K)
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)]


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    from shard.models.layers import Linear
    from shard.quantization import QuantizedLinear

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,4,8,16,32,64,128,256")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantize", default="int8,int4")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    weights = [(torch.randn(n, k) * 0.05).to(dtype) for n, k in SHAPES]
    floats = [Linear(w) for w in weights]
    print(f"{'quant':5} {'rows':>5} {'kernel ms':>9} {'dequant+torch ms':>16} {'float ms':>8}")
    for kind in args.quantize.split(","):
        layers = [QuantizedLinear(w, None, kind) for w in weights]
        for rows in (int(r) for r in args.rows.split(",")):
            xs = [torch.randn(rows, k).to(dtype) for _, k in SHAPES]
            pairs = list(zip(layers, xs, strict=True))

            def kernel_pass(pairs=pairs, kind=kind) -> None:
                for layer, x in pairs:
                    if kind == "int8":
                        layer.kernels.linear_q8(x, layer.weight, layer.scales)
                    else:
                        layer.kernels.linear_q4(x, layer.weight)

            def torch_pass(pairs=pairs) -> None:
                for layer, x in pairs:
                    F.linear(x, layer.dequantize(dtype))

            def float_pass(xs=xs) -> None:
                for f, x in zip(floats, xs, strict=True):
                    f(x)

            kernel, torch_ms, float_ms = (timed(fn, args.repeat) for fn in (kernel_pass, torch_pass, float_pass))
            print(f"{kind:5} {rows:5d} {kernel:9.2f} {torch_ms:16.2f} {float_ms:8.2f}", flush=True)


if __name__ == "__main__":
    main()
