"""The shard's running batches: admit requests (prefill), step them (decode), drop them (filter)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from shard.detokenize import IncrementalDetokenizer
from shard.kv_cache import OutOfBlocks
from shard.model_runner import ModelRunner
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
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer, eos_token_ids: frozenset[int],
                 special_ids: frozenset[int]) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.special_ids = special_ids
        self.batches: dict[int, list[RequestState]] = {}
        self.weight_bytes = 0

    def warmup(self, max_input_tokens: int, max_prefill_tokens: int, max_batch_total_tokens: int = 0) -> int:
        """Allocate the KV pool, run a worst-case prefill through it, return its size in tokens."""
        self.clear(None)
        total_tokens = self.runner.allocate(max_batch_total_tokens)
        lengths: list[int] = []
        remaining = max_prefill_tokens
        while remaining > 0:
            lengths.append(min(remaining, max_input_tokens))
            remaining -= lengths[-1]
        states = [self._dummy_state(n) for n in lengths]
        try:
            for state in states:
                self.runner.reserve(state)
        except OutOfBlocks as exc:
            self._free(states)
            raise MemoryError(
                f"the KV cache holds {total_tokens} tokens, less than --max-batch-prefill-tokens "
                f"{max_prefill_tokens}: raise --kv-cache-bytes or lower the prefill budget"
            ) from exc
        try:
            self.runner.prefill(states, [sum(lengths[: i + 1]) - 1 for i in range(len(lengths))])
        finally:
            self._free(states)
        return total_tokens

    def _dummy_state(self, length: int) -> RequestState:
        return self._state(pb.Request(id=0, input_ids=[0] * length,
                                      stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=1)))

    # ---- prefill ------------------------------------------------------------------------------
    def _state(self, request: pb.Request) -> RequestState:
        ids = list(request.input_ids) or self.tokenizer.encode(request.inputs).ids
        if request.truncate and len(ids) > request.truncate:
            ids = ids[-request.truncate:]
        stopping = request.stopping_parameters
        max_new = max(1, stopping.max_new_tokens)
        return RequestState(
            id=request.id,
            input_length=len(ids),
            max_new_tokens=max_new,
            all_ids=ids,
            sampler=RequestSampler(SamplingParams.from_proto(request.parameters)),
            stopping=StoppingCriteria(self.eos_token_ids, max_new, stopping.ignore_eos_token),
            detokenizer=IncrementalDetokenizer(self.tokenizer, ids, self.special_ids),
            stop_filter=StopSequenceFilter(list(stopping.stop_sequences)),
            top_n_tokens=request.top_n_tokens,
            prefill_logprobs=request.prefill_logprobs,
        )

    def prefill(self, batch: pb.Batch, cached: pb.CachedBatch | None) -> StepResult:
        start = time.perf_counter_ns()
        states = [self._state(request) for request in batch.requests]
        try:
            for state in states:
                self.runner.reserve(state)
        except Exception:
            self._free(states)
            raise
        rows: list[int] = []
        end = 0
        for s in states:
            end += s.input_length
            rows.extend(range(end - s.input_length, end) if s.prefill_logprobs else [end - 1])
        try:
            logits = self.runner.prefill(states, rows)
        except Exception:
            self._free(states)
            raise
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
        logits = self.runner.decode(states)
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
        for s in states:
            self.runner.release(s)

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
        return self.runner.free_blocks
