"""The Q4_1 matrices of the GGUF a model directory was converted from, as `--quantize int4` rows.

The embedded SmolLM2 is a GGUF whose decoder matrices are Q4_1 blocks: 32 weights of a row with an fp16
scale d and minimum m (w = d * q + m). `--quantize int4` stores exactly that block (shard/quantization.py),
so with the source GGUF at hand (`--gguf-source`, which the launcher passes for the embedded model) a
shard takes those blocks as they are instead of quantizing the dequantized float32 checkpoint again:
the weights are llama.cpp's, bit for bit, and loading skips the least-squares refinement.

Only the byte order within a row changes (a row holds its groups' 16-byte nibble runs first, then their
(d, m) pairs), and llama.cpp's converter permutes the rows of q_proj and k_proj for its rotary layout
(each head's dimensions interleaved in pairs): their rows are put back in the checkpoint's order here.
A matrix the GGUF does not hold as Q4_1 (or with another shape) is quantized from the checkpoint as before,
and a GGUF whose first q_proj is not the checkpoint's is not used at all.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from shard.quantization import BLOCK_BYTES, GROUP, dequantize_int4

log = logging.getLogger("shard.gguf")

# The checkpoint's names of a Llama layer's matrices -> llama.cpp's tensor names.
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
LAYER_WEIGHT = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
Q4_1 = "Q4_1"
# The matrix compared with the checkpoint before any block is used (GgufBlocks.matches).
FIRST_MATRIX = "model.layers.0.self_attn.q_proj.weight"


def gguf_name(name: str) -> str | None:
    """llama.cpp's name of a checkpoint matrix (None for any other tensor)."""
    match = LAYER_WEIGHT.fullmatch(name)
    if match is None or match.group(2) not in GGUF_NAMES:
        return None
    return f"blk.{match.group(1)}.{GGUF_NAMES[match.group(2)]}.weight"


def unpermute_rows(rows: int, heads: int) -> torch.Tensor:
    """Row i of the checkpoint's q_proj / k_proj is row index[i] of llama.cpp's: that converter stores each
    head's rows as (half, pair) and the checkpoint as (pair, half)."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, half, 2).transpose(1, 2).reshape(rows)


def repack_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """GGUF Q4_1 rows [N, G * 20] (each block: d, m, 16 bytes of nibbles) -> the int4 row layout
    (the G nibble runs, then the G (d, m) pairs)."""
    n = blocks.shape[0]
    grouped = blocks.reshape(n, -1, BLOCK_BYTES)
    return torch.cat([grouped[:, :, 4:].reshape(n, -1), grouped[:, :, :4].reshape(n, -1)], dim=1).contiguous()


class GgufBlocks:
    """The Q4_1 matrices of one GGUF file, read lazily (memory-mapped)."""

    def __init__(self, path: Path, num_heads: int, num_kv_heads: int) -> None:
        import gguf

        self.path = path
        self._reader = gguf.GGUFReader(str(path))
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._heads = {"attn_q": num_heads, "attn_k": num_kv_heads}
        self.matrices_used = 0

    def matches(self, reference: torch.Tensor) -> bool:
        """Whether this GGUF's first q_proj is `reference` (the checkpoint's, in float32) to bf16 rounding:
        the blocks of a GGUF of another model (a stray GGUF_SOURCE) must not replace a checkpoint's weights."""
        rows = self._whole(FIRST_MATRIX, reference.shape[1])
        if rows is None or rows.shape[0] != reference.shape[0]:
            return False
        difference = (dequantize_int4(rows, reference.shape[1]) - reference).abs().max().item()
        return difference <= 2 ** -7 * max(reference.abs().max().item(), 1e-6)

    def rows(self, name: str, start: int, end: int, in_features: int) -> torch.Tensor | None:
        """Rows [start, end) of checkpoint matrix `name` as int4 rows, or None where the GGUF has no Q4_1
        matrix of that shape for it."""
        whole = self._whole(name, in_features)
        if whole is None:
            return None
        self.matrices_used += 1
        return whole[start:end].contiguous()

    def columns(self, name: str, start: int, end: int, in_features: int) -> torch.Tensor | None:
        """Input columns [start, end) (on group boundaries, or the row's end) of every row, as int4 rows."""
        whole = self._whole(name, in_features)
        if whole is None:
            return None
        self.matrices_used += 1
        groups = whole.shape[1] // BLOCK_BYTES
        first, last = start // GROUP, -(-end // GROUP)
        nibbles, pairs = whole[:, : groups * 16], whole[:, groups * 16:]
        return torch.cat([nibbles[:, first * 16: last * 16], pairs[:, first * 4: last * 4]], dim=1).contiguous()

    def _whole(self, name: str, in_features: int) -> torch.Tensor | None:
        key = gguf_name(name)
        tensor = self._tensors.get(key) if key is not None else None
        if tensor is None or tensor.tensor_type.name != Q4_1 or int(tensor.shape[0]) != in_features:
            return None
        data = torch.from_numpy(tensor.data.copy())  # [out_features, blocks * 20] bytes
        rows = repack_q4_1(data)
        kind = key.split(".")[2]
        if kind in self._heads:
            rows = rows[unpermute_rows(rows.shape[0], self._heads[kind])]
        return rows


def open_gguf_blocks(path: Path, num_heads: int, num_kv_heads: int) -> GgufBlocks | None:
    if not path.is_file():
        log.warning("--gguf-source %s is not a file: int4 weights are quantized from the checkpoint", path)
        return None
    try:
        return GgufBlocks(path, num_heads, num_kv_heads)
    except ValueError as exc:  # not a GGUF (gguf's reader checks the magic and the header)
        log.warning("--gguf-source %s is not a readable GGUF (%s): int4 weights are quantized from the checkpoint",
                    path, exc)
        return None
