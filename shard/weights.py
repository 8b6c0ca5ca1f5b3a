"""Safetensors loading that reads only this rank's slice of each tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

if TYPE_CHECKING:
    from shard.gguf_blocks import GgufBlocks

ALIGNMENT = 64  # bytes: a cache line, and an AVX-512 vector


class Weights:
    def __init__(self, model_dir: Path, dtype: torch.dtype, device: torch.device, quantize: str | None = None) -> None:
        self.dtype = dtype
        self.device = device
        # int8 / int4: the model quantizes its matrices as it loads them (shard/quantization.py)
        self.quantize = quantize
        # the Q4_1 blocks of the GGUF this checkpoint was converted from: set under --quantize int4 only, where known
        self.gguf_blocks: GgufBlocks | None = None
        self._file_of: dict[str, Path] = {}
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {name: model_dir / file for name, file in weight_map.items()}
        else:
            for file in sorted(model_dir.glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as handle:
                    for name in handle.keys():
                        self._file_of[name] = file
        if not self._file_of:
            raise FileNotFoundError(f"no safetensors weights in {model_dir}")
        self._handles: dict[Path, object] = {}
        self.bytes_loaded = 0

    def has(self, name: str) -> bool:
        return name in self._file_of

    def _slice(self, name: str):
        file = self._file_of.get(name)
        if file is None:
            raise KeyError(f"weight {name!r} not found in the checkpoint")
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file].get_slice(name)  # type: ignore[attr-defined]

    def _finish(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device=self.device, dtype=self.dtype).contiguous()
        if tensor.data_ptr() % ALIGNMENT:
            # A slice read in the checkpoint's own dtype lies where safetensors put it, 8-byte aligned:
            # then every 64-byte vector load of the CPU kernels straddles two cache lines (SmolLM2 fp32
            # at batch 1: half the matrices so, ~10% of a decode step).
            tensor = tensor.clone()
        self.bytes_loaded += tensor.numel() * tensor.element_size()
        return tensor

    def get(self, name: str) -> torch.Tensor:
        return self._finish(self._slice(name)[:])

    def get_rows(self, name: str, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) of dimension 0, read without loading the rest."""
        return self._finish(self._slice(name)[start:end])

    def row_absmax(self, name: str) -> torch.Tensor:
        """The largest magnitude of each row of a 2-D weight (all its columns, in float32; not counted as
        loaded): a row-parallel slice's int8 scales are those of its whole rows."""
        # through the model's dtype, as the slices themselves are read
        return self._slice(name)[:].to(device=self.device, dtype=self.dtype).float().abs().amax(dim=1)

    def peek(self, name: str) -> torch.Tensor:
        """A whole tensor in float32, for a check (not counted as loaded, not kept)."""
        return self._slice(name)[:].float()

    def get_cols(self, name: str, start: int, end: int) -> torch.Tensor:
        """Columns [start, end) of dimension 1, read without loading the rest."""
        return self._finish(self._slice(name)[:, start:end])
