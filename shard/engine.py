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
                 special_ids: frozenset[int], prefill_chunk_tokens: int = 256) -> None:
        self.runner = runner
        # While other requests are decoding, a long prompt is fed this many tokens per step, so
        # running streams keep getting tokens instead of stalling behind the whole prefill.
        self.prefill_chunk_tokens = prefill_chunk_tokens
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
            self.runner.step([], [(state, state.input_length) for state in states],
                             [sum(lengths[: i + 1]) - 1 for i in range(len(lengths))])
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
        """Start new requests. Those of `cached` join them: with a runner that feeds prompts in chunks
        they take their next step in the same forward (nobody waits for the newcomers' prefill);
        otherwise they are carried into the result without stepping."""
        states = [self._state(request) for request in batch.requests]
        try:
            for state in states:
                self.runner.reserve(state)
        except Exception:
            self._free(states)
            raise
        carried = self.batches.pop(cached.id, []) if cached is not None else []
        try:
            if self.runner.supports_chunking:
                return self._advance(batch.id, carried + states, [])
            return self._advance(batch.id, states, carried)
        except Exception:
            self._free(states)
            raise

    def decode(self, batches: Sequence[pb.CachedBatch]) -> StepResult:
        """One step for every request of the batches (merged): a token each, or a prompt chunk."""
        states: list[RequestState] = []
        for cached in batches:
            states.extend(self.batches.pop(cached.id, []))
        if not states:
            return StepResult([], None, 0, 0)
        return self._advance(batches[0].id, states, [])

    def _advance(self, batch_id: int, states: list[RequestState], carried: list[RequestState]) -> StepResult:
        start = time.perf_counter_ns()
        decoding = [s for s in states if s.cached_length >= s.input_length]
        # Chunk only when someone is waiting on this step; a prefill alone goes as fast as it can.
        others_wait = bool(decoding or carried or any(self.batches.values()))
        budget = self.prefill_chunk_tokens if others_wait and self.runner.supports_chunking else 1 << 62
        chunks: list[tuple[RequestState, int]] = []
        for s in states:
            if s.cached_length < s.input_length and budget > 0:
                n = min(s.input_length - s.cached_length, budget)
                chunks.append((s, n))
                budget -= n
        rows = list(range(len(decoding)))
        chunk_rows: list[tuple[int, int]] = []  # (first logits row of the chunk, rows it has)
        row = len(decoding)
        for s, n in chunks:
            completes = s.cached_length + n == s.input_length
            wanted = range(row, row + n) if s.prefill_logprobs else ([row + n - 1] if completes else [])
            chunk_rows.append((len(rows), len(wanted)))
            rows.extend(wanted)
            row += n
        logits = self.runner.step(decoding, chunks, rows)
        forward_ns = time.perf_counter_ns() - start
        emitting, emit_rows, prefill_tokens = list(decoding), list(range(len(decoding))), [None] * len(decoding)
        for (s, n), (first, count) in zip(chunks, chunk_rows, strict=True):
            if s.prefill_logprobs:
                self._collect_prefill_logprobs(s, logits[first: first + count], s.cached_length - n)
            if s.cached_length == s.input_length:  # this chunk finished the prompt: first token now
                emitting.append(s)
                emit_rows.append(first + count - 1)
                prefill_tokens.append(self._prefill_tokens(s) if s.prefill_logprobs else None)
        generations = self._choose_and_emit(emitting, logits[emit_rows], prefill_tokens) if emitting else []
        survivors = carried + [s for s in states if s.finish_reason is None]
        result_batch = self._store(batch_id, survivors)
        return StepResult(generations, result_batch, forward_ns, time.perf_counter_ns() - start - forward_ns)

    def _collect_prefill_logprobs(self, state: RequestState, logits: torch.Tensor, first_position: int) -> None:
        """Logprob of each prompt token given the ones before it (logits at p score token p + 1)."""
        ids = state.all_ids
        last = min(first_position + logits.shape[0], state.input_length - 1)
        if last <= first_position:
            return
        targets = torch.tensor(ids[first_position + 1: last + 1], device=logits.device)[:, None]
        values = torch.log_softmax(logits[: last - first_position], dim=-1).gather(1, targets).squeeze(1)
        state.prefill_logprob_values.extend(values.tolist())

    def _prefill_tokens(self, state: RequestState) -> pb.Tokens:
        ids = state.all_ids[: state.input_length]
        texts = [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]
        return pb.Tokens(ids=ids, logprobs=[float("nan")] + state.prefill_logprob_values, texts=texts,
                         is_special=[i in self.special_ids for i in ids])

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
