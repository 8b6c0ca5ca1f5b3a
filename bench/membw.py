"""Measured memory read bandwidth of this machine: the floor a batch-1 decode step cannot beat."""

from __future__ import annotations

import time

import torch


def read_bandwidth_gbs(megabytes: int = 1024, repeats: int = 5) -> float:
    # A tensor far larger than the caches, summed: every byte comes from DRAM once per pass.
    x = torch.ones(megabytes * (1 << 20) // 4)
    x.sum()
    start = time.perf_counter()
    for _ in range(repeats):
        x.sum()
    return x.numel() * 4 * repeats / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    gbs = read_bandwidth_gbs()
    print(f"memory read bandwidth: {gbs:.1f} GB/s (torch.sum over 1 GiB, {torch.get_num_threads()} threads)")
    for name, size in (("fp32", 538.1e6), ("bf16", 269.0e6)):
        floor_ms = size / gbs / 1e6
        print(f"SmolLM2-135M {name}: {size / 1e6:.0f} MB of weights -> floor {floor_ms:.1f} ms/token at batch 1")
