"""Fallback for architectures without tensor-parallel model code: transformers' own model, one shard.

Each request has the model's own KV cache object (kept here, by request id); steps run the model once
per request. It is correct for anything AutoModelForCausalLM loads, and slow: the Llama family takes the
paged path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from shard.block_manager import Allocation, OutOfBlocks
from shard.request_state import RequestState
from shard.scheduler import StepPlan


def _first(config: object, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return default


class TransformersRunner:
    """The ModelRunner protocol over a transformers model; its budget is counted in tokens (block of 1)."""

    def __init__(self, model_dir: Path, dtype: torch.dtype, kv_cache_bytes: int, trust_remote_code: bool) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                          trust_remote_code=trust_remote_code).eval()
        cfg = self.model.config
        layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", default=1)
        heads = _first(cfg, "num_attention_heads", "n_head", default=1)
        kv_heads = _first(cfg, "num_key_value_heads", default=heads)
        hidden = _first(cfg, "hidden_size", "n_embd", "d_model", default=heads)
        head_dim = _first(cfg, "head_dim", default=hidden // heads)
        self.bytes_per_token = 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        self.max_position_embeddings = _first(cfg, "max_position_embeddings", "n_positions", default=2048)
        self.kv_cache_bytes = kv_cache_bytes
        self.block_size = 1
        self.supports_chunking = False
        # Each request has its own transformers cache object: nothing to share between requests.
        self.prefix_caching = False
        # transformers' own attention ("sdpa", "eager", ...) over its own cache, one request at a time
        self.attention_impl = f"transformers-{getattr(self.model.config, '_attn_implementation', None) or 'eager'}"
        self.capacity = 0
        self.reserved = 0
        self._caches: dict[int, object] = {}  # request id -> the model's past_key_values
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def free_blocks(self) -> int:
        return self.capacity - self.reserved

    def allocate(self, max_tokens: int = 0) -> int:
        capacity = self.kv_cache_bytes // self.bytes_per_token
        self.capacity = min(capacity, max_tokens) if max_tokens else capacity
        self.reserved = 0
        self._caches.clear()
        if self.capacity < 1:
            raise MemoryError(f"--kv-cache-bytes {self.kv_cache_bytes} holds no token")
        return self.capacity

    def reserve(self, request: RequestState) -> Allocation:
        if not self.capacity:
            self.allocate()
        if self.reserved + request.max_tokens > self.capacity:
            raise OutOfBlocks(f"need {request.max_tokens} KV tokens, {self.free_blocks} free of {self.capacity}")
        self.reserved += request.max_tokens
        return Allocation([request.max_tokens])  # no blocks: the table holds what release gives back

    def register_blocks(self, blocks: Sequence[int], keys: Sequence[bytes], first: int) -> None:
        pass  # no prefix cache

    def release(self, request: RequestState) -> None:
        if request.block_table:
            self.reserved -= request.block_table[0]
        self._caches.pop(request.id, None)

    @torch.inference_mode()
    def run(self, plan: StepPlan[RequestState]) -> torch.Tensor:
        """Rows: one per decoding request, then every token of each (whole) prompt."""
        rows: list[torch.Tensor] = []
        wanted = set(plan.logits_rows)
        for row, r in enumerate(plan.decoding):
            out = self.model(input_ids=torch.tensor([[r.all_ids[-1]]]), past_key_values=self._caches[r.id],
                             use_cache=True)
            self._caches[r.id] = out.past_key_values
            if row in wanted:
                rows.append(out.logits[0, -1:].float())
        offset = len(plan.decoding)
        for chunk in plan.chunks:
            r, n = chunk.request, chunk.length
            assert chunk.start == 0 and n == r.input_length, "the generic path takes whole prompts"
            out = self.model(input_ids=torch.tensor([r.all_ids[:n]]), use_cache=True)
            self._caches[r.id] = out.past_key_values
            keep = [row - offset for row in range(offset, offset + n) if row in wanted]
            rows.append(out.logits[0, keep].float())
            offset += n
        return torch.cat(rows)
