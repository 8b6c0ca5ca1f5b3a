"""The shard's running batches: admit requests (prefill), step them (decode), drop them (filter)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from shard.detokenize import IncrementalDetokenizer
from shard.distributed import Distributed
from shard.kv_cache import BlockAllocator, KVCache, blocks_needed, context_slots, slots_of
from shard.models.llama import AttentionInputs, LlamaModel
from shard.request_state import RequestState
from shard.sampling import RequestSampler, SamplingParams, choose_tokens
from shard.stopping import StoppingCriteria, StopSequenceFilter
from tgi_proto import generate_pb2 as pb

log = logging.getLogger("shard.engine")


@dataclass
class StepResult:
    generations: list[pb.Generation]
    batch: pb.CachedBatch | None
    forward_ns: int
    decode_ns: int


class Engine:
    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, eos_token_ids: frozenset[int],
                 special_ids: frozenset[int], dist: Distributed, kv_cache_bytes: int,
                 block_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.special_ids = special_ids
        self.dist = dist
        self.block_size = block_size
        self.kv_cache_bytes = kv_cache_bytes
        self.batches: dict[int, list[RequestState]] = {}
        self.cache: KVCache | None = None
        self.allocator: BlockAllocator | None = None
        self.weight_bytes = 0

    # ---- cache budget -------------------------------------------------------------------------
    def _allocate_cache(self, max_tokens: int = 0) -> int:
        cfg = self.model.config
        per_token = KVCache.bytes_per_token(cfg.num_layers, self.model.local_kv_heads, cfg.head_dim,
                                            self.model.dtype)
        # Every rank must agree, or the router would plan for a budget some rank cannot hold.
        num_blocks = self.kv_cache_bytes // (per_token * self.block_size)
        if max_tokens:
            num_blocks = min(num_blocks, blocks_needed(max_tokens, self.block_size))
        num_blocks = self.dist.all_reduce_min(num_blocks)
        if num_blocks < 1:
            raise MemoryError(f"--kv-cache-bytes {self.kv_cache_bytes} holds no {self.block_size}-token block")
        self.cache = KVCache.allocate(cfg.num_layers, num_blocks, self.block_size, self.model.local_kv_heads,
                                      cfg.head_dim, self.model.dtype, self.model.device)
        self.allocator = BlockAllocator(num_blocks)
        return num_blocks * self.block_size

    def warmup(self, max_input_tokens: int, max_prefill_tokens: int, max_batch_total_tokens: int = 0) -> int:
        """Allocate the KV pool, run a worst-case prefill through it, return its size in tokens."""
        self.clear(None)
        self.cache = None  # free the old pool before allocating the new one
        total_tokens = self._allocate_cache(max_batch_total_tokens)
        lengths: list[int] = []
        remaining = max_prefill_tokens
        while remaining > 0:
            lengths.append(min(remaining, max_input_tokens))
            remaining -= lengths[-1]
        needed = sum(blocks_needed(n, self.block_size) for n in lengths)
        if needed * self.block_size > total_tokens:
            raise MemoryError(
                f"the KV cache holds {total_tokens} tokens, less than --max-batch-prefill-tokens "
                f"{max_prefill_tokens}: raise --kv-cache-bytes or lower the prefill budget"
            )
        assert self.allocator is not None
        tables = [self.allocator.allocate(blocks_needed(n, self.block_size)) for n in lengths]
        ids = torch.zeros(sum(lengths), dtype=torch.long, device=self.model.device)
        self._prefill_forward(ids, lengths, tables, [n - 1 for n in lengths])
        for table in tables:
            self.allocator.free(table)
        return total_tokens

    # ---- prefill ------------------------------------------------------------------------------
    def _new_state(self, request: pb.Request) -> RequestState:
        assert self.allocator is not None
        ids = list(request.input_ids) or self.tokenizer.encode(request.inputs).ids
        if request.truncate and len(ids) > request.truncate:
            ids = ids[-request.truncate:]
        stopping = request.stopping_parameters
        max_new = max(1, stopping.max_new_tokens)
        table = self.allocator.allocate(blocks_needed(len(ids) + max_new, self.block_size))
        return RequestState(
            id=request.id,
            input_length=len(ids),
            max_new_tokens=max_new,
            all_ids=ids,
            block_table=table,
            sampler=RequestSampler(SamplingParams.from_proto(request.parameters)),
            stopping=StoppingCriteria(self.eos_token_ids, max_new, stopping.ignore_eos_token),
            detokenizer=IncrementalDetokenizer(self.tokenizer, ids, self.special_ids),
            stop_filter=StopSequenceFilter(list(stopping.stop_sequences)),
            top_n_tokens=request.top_n_tokens,
            prefill_logprobs=request.prefill_logprobs,
        )

    def _prefill_forward(self, ids: torch.Tensor, lengths: list[int], tables: list[list[int]],
                         logits_rows: list[int]) -> torch.Tensor:
        assert self.cache is not None
        dev = self.model.device
        positions = torch.cat([torch.arange(n, device=dev) for n in lengths])
        slots = [s for n, t in zip(lengths, tables, strict=True) for s in slots_of(t, 0, n, self.block_size)]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        attn = AttentionInputs(torch.tensor(slots, device=dev), prefill_spans=list(zip(starts, lengths,
                                                                                         strict=True)))
        return self.model.forward(ids, positions, attn, self.cache, torch.tensor(logits_rows, device=dev))

    def prefill(self, batch: pb.Batch, cached: pb.CachedBatch | None) -> StepResult:
        if self.cache is None:
            self._allocate_cache()
        start = time.perf_counter_ns()
        states: list[RequestState] = []
        try:
            for request in batch.requests:
                states.append(self._new_state(request))
        except Exception:
            self._free(states)
            raise
        lengths = [s.input_length for s in states]
        offsets = [sum(lengths[: i + 1]) for i in range(len(lengths))]
        rows: list[int] = []
        for s, end in zip(states, offsets, strict=True):
            rows.extend(range(end - s.input_length, end) if s.prefill_logprobs else [end - 1])
        ids = torch.tensor([t for s in states for t in s.all_ids], device=self.model.device)
        logits = self._prefill_forward(ids, lengths, [s.block_table for s in states], rows)
        for s in states:
            s.cached_length = s.input_length
        last_rows, prefill_tokens, row = [], [], 0
        for s in states:
            if s.prefill_logprobs:
                prefill_tokens.append(self._prefill_tokens(s, logits[row: row + s.input_length]))
                row += s.input_length
            else:
                prefill_tokens.append(None)
                row += 1
            last_rows.append(row - 1)
        forward_ns = time.perf_counter_ns() - start
        generations = self._choose_and_emit(states, logits[last_rows], prefill_tokens)
        survivors = [s for s in states if s.finish_reason is None]
        if cached is not None:
            survivors = self.batches.pop(cached.id, []) + survivors
        result_batch = self._store(batch.id, survivors)
        return StepResult(generations, result_batch, forward_ns, time.perf_counter_ns() - start - forward_ns)

    def _prefill_tokens(self, state: RequestState, logits: torch.Tensor) -> pb.Tokens:
        logprobs = torch.log_softmax(logits, dim=-1)
        ids = state.all_ids[: state.input_length]
        chosen = [float("nan")] + logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()
        texts = [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]
        return pb.Tokens(ids=ids, logprobs=chosen, texts=texts, is_special=[i in self.special_ids for i in ids])

    # ---- decode -------------------------------------------------------------------------------
    def decode(self, batches: Sequence[pb.CachedBatch]) -> StepResult:
        start = time.perf_counter_ns()
        states: list[RequestState] = []
        for cached in batches:
            states.extend(self.batches.pop(cached.id, []))
        if not states:
            return StepResult([], None, 0, 0)
        assert self.cache is not None
        dev = self.model.device
        ids = torch.tensor([s.all_ids[-1] for s in states], device=dev)
        positions = torch.tensor([s.cached_length for s in states], device=dev)
        new_slots = [s.block_table[s.cached_length // self.block_size] * self.block_size
                     + s.cached_length % self.block_size for s in states]
        for s in states:
            s.cached_length += 1
        slots, mask = context_slots([s.block_table for s in states], [s.cached_length for s in states],
                                    self.block_size, dev)
        attn = AttentionInputs(torch.tensor(new_slots, device=dev), context_slots=slots, context_mask=mask)
        logits = self.model.forward(ids, positions, attn, self.cache, torch.arange(len(states), device=dev))
        forward_ns = time.perf_counter_ns() - start
        generations = self._choose_and_emit(states, logits, [None] * len(states))
        batch = self._store(batches[0].id, [s for s in states if s.finish_reason is None])
        return StepResult(generations, batch, forward_ns, time.perf_counter_ns() - start - forward_ns)

    # ---- token choice, text, stopping ---------------------------------------------------------
    def _choose_and_emit(self, states: list[RequestState], logits: torch.Tensor,
                         prefill_tokens: list[pb.Tokens | None]) -> list[pb.Generation]:
        chosen = choose_tokens(logits, [s.sampler for s in states], [s.all_ids for s in states],
                               [s.top_n_tokens for s in states])
        generations = []
        for i, s in enumerate(states):
            token_id = chosen.ids[i]
            s.all_ids.append(token_id)
            special = token_id in self.special_ids
            raw, released, matched = s.detokenizer.step(token_id), "", False
            if not special:
                released, matched = s.stop_filter.push(raw)
            s.finish_reason = s.stopping.check(token_id, matched)
            if s.finish_reason is not None and not matched:
                tail, tail_matched = s.stop_filter.push(s.detokenizer.finish())
                released += tail if tail_matched else tail + s.stop_filter.flush()
            s.text += released
            # A special token shows its own string; text it flushed at the end is in generated_text only.
            text = raw if special else released
            generation = pb.Generation(
                request_id=s.id,
                tokens=pb.Tokens(ids=[token_id], logprobs=[chosen.logprobs[i]], texts=[text], is_special=[special]),
            )
            if prefill_tokens[i] is not None:
                generation.prefill_tokens.CopyFrom(prefill_tokens[i])
            if s.top_n_tokens:
                top_ids, top_logprobs = chosen.top_tokens[i]
                generation.top_tokens.append(pb.Tokens(
                    ids=top_ids, logprobs=top_logprobs,
                    texts=[self.tokenizer.decode([t], skip_special_tokens=False) for t in top_ids],
                    is_special=[t in self.special_ids for t in top_ids],
                ))
            if s.finish_reason is not None:
                generated = pb.GeneratedText(text=s.text, generated_tokens=len(s.generated_ids),
                                             finish_reason=int(s.finish_reason))
                if s.sampler.params.do_sample:
                    generated.seed = s.sampler.params.seed
                generation.generated_text.CopyFrom(generated)
            generations.append(generation)
        self._free([s for s in states if s.finish_reason is not None])
        return generations

    # ---- batch bookkeeping --------------------------------------------------------------------
    def _store(self, batch_id: int, states: list[RequestState]) -> pb.CachedBatch | None:
        if not states:
            return None
        self.batches[batch_id] = states
        return self.cached_batch(batch_id)

    def cached_batch(self, batch_id: int) -> pb.CachedBatch:
        states = self.batches[batch_id]
        return pb.CachedBatch(
            id=batch_id, request_ids=[s.id for s in states], size=len(states),
            max_tokens=sum(s.max_tokens for s in states),
            current_tokens=sum(s.cached_length for s in states),
        )

    def _free(self, states: list[RequestState]) -> None:
        if self.allocator is None:
            return
        for s in states:
            if s.block_table:
                self.allocator.free(s.block_table)
                s.block_table = []

    def filter(self, batch_id: int, request_ids: Sequence[int]) -> pb.CachedBatch | None:
        keep = set(request_ids)
        states = self.batches.pop(batch_id, [])
        self._free([s for s in states if s.id not in keep])
        return self._store(batch_id, [s for s in states if s.id in keep])

    def clear(self, batch_id: int | None) -> None:
        ids = list(self.batches) if batch_id is None else [batch_id]
        for i in ids:
            self._free(self.batches.pop(i, []))

    @property
    def free_blocks(self) -> int:
        return self.allocator.free_blocks if self.allocator else 0
