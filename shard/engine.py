"""The shard's running batches: admit requests (prefill), step them (decode), drop them (filter).

One step is schedule -> run -> sample -> postprocess: the scheduler plans which requests advance and by
how much (shard/scheduler.py), the runner computes the logits the plan asks for (shard/model_runner.py),
sampling chooses the tokens (shard/sampling.py) and the postprocess applies the step to the requests
(shard/postprocess.py). Between steps the engine keeps each cached batch's requests, and their cache
room, under the batch id the router knows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from tokenizers import Tokenizer

from shard.block_manager import OutOfBlocks
from shard.grammar import GrammarCompiler, MaskWorker
from shard.model_runner import ModelRunner
from shard.postprocess import Postprocessor
from shard.request_state import RequestState
from shard.sampling import ChosenTokens, VerifiedTokens, choose_tokens, prompt_token_logprobs, verify_drafts
from shard.scheduler import Scheduler, StepPlan
from shard.speculation import MIN_GAIN, MIN_GAIN_QUANTIZED, Drafter
from shard.types import CachedBatch, Request, StepResult

log = logging.getLogger("shard")


class Engine:
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer, eos_token_ids: frozenset[int],
                 special_ids: frozenset[int], prefill_chunk_tokens: int = 256, vocab_size: int = 0,
                 speculate: int = 0) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.special_ids = special_ids
        self.scheduler = Scheduler(prefill_chunk_tokens, runner.supports_chunking)
        # Blocks are keyed and cached as they fill only where the runner shares them between requests.
        self.postprocessor = Postprocessor(tokenizer, special_ids, runner if runner.prefix_caching else None)
        self.batches: dict[int, list[RequestState]] = {}
        self.weight_bytes = 0
        self.grammars = GrammarCompiler(tokenizer, vocab_size, eos_token_ids)
        self.masks = MaskWorker(self.grammars)
        # N-gram speculation (shard/speculation.py): up to `speculate` drafts per decoding request and step,
        # where the runner can verify them (every row through the paged cache).
        if speculate and not getattr(runner, "supports_speculation", False):
            log.warning("--speculate %d ignored: this model's runner cannot verify drafts", speculate)
            speculate = 0
        elif speculate:
            log.info("n-gram speculation: up to %d draft tokens per request and step", speculate)
        min_gain = MIN_GAIN_QUANTIZED if getattr(runner, "quantized", False) else MIN_GAIN
        self.drafter = Drafter(speculate, getattr(runner, "max_step_rows", 32), min_gain,
                               exact_step_rows=getattr(runner, "exact_step_rows", 0))

    @property
    def speculate(self) -> int:
        return self.drafter.speculate

    def warmup(self, max_input_tokens: int, max_prefill_tokens: int, max_batch_total_tokens: int = 0) -> int:
        """Allocate the KV pool, run a worst-case prefill through it, return its size in tokens."""
        self.clear(None)
        _ = self.grammars.lltokenizer  # built now rather than in the first constrained request's prefill
        total_tokens = self.runner.allocate(max_batch_total_tokens)
        lengths: list[int] = []
        remaining = max_prefill_tokens
        while remaining > 0:
            lengths.append(min(remaining, max_input_tokens))
            remaining -= lengths[-1]
        try:
            states = self._admit([Request(id=0, input_ids=[0] * n, max_new_tokens=1) for n in lengths])
        except OutOfBlocks as exc:
            raise MemoryError(
                f"the KV cache holds {total_tokens} tokens, less than --max-batch-prefill-tokens "
                f"{max_prefill_tokens}: raise --kv-cache-bytes or lower the prefill budget"
            ) from exc
        try:
            self.runner.run(self.scheduler.schedule(states))  # nobody waits: every prompt in one piece
        finally:
            self._free(states)
        return total_tokens

    def prefill(self, batch_id: int, requests: Sequence[Request], cached_batch_id: int | None) -> StepResult:
        """Start new requests. Those of the cached batch join them: with a runner that feeds prompts in
        chunks they take their next step in the same forward (nobody waits for the newcomers' prefill);
        otherwise they are carried into the result without stepping."""
        states = self._admit(requests)
        carried = self.batches.pop(cached_batch_id, []) if cached_batch_id is not None else []
        try:
            if self.scheduler.supports_chunking:
                return self._step(batch_id, carried + states, [])
            return self._step(batch_id, states, carried)
        except Exception:
            self._free(states)
            raise

    def decode(self, batch_ids: Sequence[int]) -> StepResult:
        """One step for every request of the batches (merged): a token each, or a prompt chunk."""
        states: list[RequestState] = []
        for batch_id in batch_ids:
            states.extend(self.batches.pop(batch_id, []))
        if not states:
            return StepResult([], None, 0, 0)
        return self._step(batch_ids[0], states, [])

    def _step(self, batch_id: int, states: list[RequestState], carried: list[RequestState]) -> StepResult:
        start = time.perf_counter_ns()
        others_waiting = bool(carried) or any(self.batches.values())
        plan = self.scheduler.schedule(states, others_waiting=others_waiting)
        if self.drafter.speculate and plan.decoding:
            # Drafts fill the rows the step leaves under its limits (shard/speculation.py Drafter).
            drafts = self.drafter.drafts(states, plan.num_rows)
            if any(drafts):
                plan = self.scheduler.schedule(states, others_waiting=others_waiting, drafts=drafts)
        # The grammar masks of this step's tokens are filled while the forward runs.
        constrained = [i for i, (request, _) in enumerate(plan.emitting) if request.matcher is not None]
        masks = self.masks.start([plan.emitting[i][0].matcher for i in constrained]) if constrained else None
        logits = self.runner.run(plan)
        forward_ns = time.perf_counter_ns() - start
        refused = (constrained, masks.result()[:, : logits.shape[-1]]) if masks is not None else None
        verified = self._verify(plan, logits)
        generations = self.postprocessor.apply(plan, self._prompt_logprobs(plan, logits),
                                               self._choose(plan, logits, refused), verified)
        self._free([s for s in states if s.finish_reason is not None])
        batch = self._store(batch_id, carried + [s for s in states if s.finish_reason is None])
        for chunk, tokens in zip(plan.verifying, verified, strict=True):
            self.drafter.record(chunk.request, len(chunk.drafts), tokens.accepted)
        drafted, accepted = plan.drafted, sum(v.accepted for v in verified)
        return StepResult(generations, batch, forward_ns, time.perf_counter_ns() - start - forward_ns,
                          draft_tokens=drafted, accepted_tokens=accepted)

    # ---- sampling: what the step's logits say -------------------------------------------------
    @staticmethod
    def _choose(plan: StepPlan[RequestState], logits: torch.Tensor,
                refused: tuple[list[int], torch.Tensor] | None) -> ChosenTokens | None:
        emitting = plan.emitting
        if not emitting:
            return None
        requests = [request for request, _ in emitting]
        return choose_tokens(logits[[row for _, row in emitting]], [r.sampler for r in requests],
                             [r.all_ids for r in requests], [r.top_n_tokens for r in requests], refused)

    @staticmethod
    def _verify(plan: StepPlan[RequestState], logits: torch.Tensor) -> list[VerifiedTokens]:
        """The kept drafts and the next token of each request that verified drafts in this step."""
        if not plan.verifying:
            return []
        first = plan.verifying[0].logits_start
        last = plan.verifying[-1].logits_start + plan.verifying[-1].length
        requests = [v.request for v in plan.verifying]
        return verify_drafts(logits[first:last], [r.sampler for r in requests], [r.all_ids for r in requests],
                             [r.top_n_tokens for r in requests], [v.drafts for v in plan.verifying])

    @staticmethod
    def _prompt_logprobs(plan: StepPlan[RequestState], logits: torch.Tensor) -> list[list[float]]:
        """Per chunk, the logprobs of its prompt tokens after the first (for requests that ask for them)."""
        out: list[list[float]] = []
        for chunk in plan.chunks:
            request = chunk.request
            if not request.prefill_logprobs:
                out.append([])
                continue
            # Row i scores the prompt token at start + i + 1; the prompt's last row scores a generated one.
            last = min(chunk.start + chunk.logits_count, request.input_length - 1)
            rows = logits[chunk.logits_start: chunk.logits_start + chunk.logits_count]
            out.append(prompt_token_logprobs(rows, request.all_ids[chunk.start + 1: last + 1]))
        return out

    # ---- admission and batch bookkeeping ------------------------------------------------------
    def _admit(self, requests: Sequence[Request]) -> list[RequestState]:
        """New requests' states, each with the cache room it can ever need; none if one does not fit. A
        request whose prompt starts with cached blocks starts with them as its cached length: its prefill
        computes only the rest."""
        states = [RequestState.admit(r, self.tokenizer, self.eos_token_ids, self.special_ids,
                                     self.grammars.matcher(r.parameters.grammar) if r.parameters.grammar else None)
                  for r in requests]
        try:
            for state in states:
                allocation = self.runner.reserve(state)
                state.block_table = allocation.blocks
                state.cached_length = state.reused_prompt_tokens = allocation.cached_tokens
                state.block_hashes = allocation.block_hashes
        except Exception:
            self._free(states)
            raise
        return states

    def _free(self, states: list[RequestState]) -> None:
        for state in states:
            self.runner.release(state)
            state.block_table = []
            state.block_hashes = []

    def _store(self, batch_id: int, states: list[RequestState]) -> CachedBatch | None:
        if not states:
            return None
        self.batches[batch_id] = states
        return self.cached_batch(batch_id)

    def cached_batch(self, batch_id: int) -> CachedBatch:
        states = self.batches[batch_id]
        return CachedBatch(id=batch_id, request_ids=[s.id for s in states], size=len(states),
                           max_tokens=sum(s.max_tokens for s in states),
                           current_tokens=sum(s.cached_length for s in states))

    def filter(self, batch_id: int, request_ids: Sequence[int]) -> CachedBatch | None:
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
