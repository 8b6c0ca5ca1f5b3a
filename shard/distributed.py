"""The tensor-parallel process group: gloo on CPU, NCCL on CUDA, a no-op for one rank."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def split_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """The [start, end) of part `index` when `total` items are split as evenly as possible."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


@dataclass
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "localhost")
            os.environ.setdefault("MASTER_PORT", "29500")
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
            )
        return cls(rank=rank, world_size=world_size, device=device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_min(self, value: int) -> int:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's equally sized tensor along the last dimension."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=-1)

    def all_gather_strings(self, value: str) -> list[str]:
        """Every rank's string, in rank order (used once at start-up, for the shards' addresses)."""
        if self.world_size == 1:
            return [value]
        gathered: list[str | None] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return [str(v) for v in gathered]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
