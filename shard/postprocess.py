"""The one place where a step changes its requests: cached length, prompt logprobs, the new token, its
text, the stop checks and finishing; and the generations that report it.

Runs after the forward and the token choice, on what they returned (lists, no tensors): the step's plan
(shard/scheduler.py) says which requests moved by how much and which of them get a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from tokenizers import Tokenizer

from shard.block_manager import chain_hashes
from shard.grammar import consume
from shard.request_state import RequestState
from shard.scheduler import StepPlan
from shard.types import GeneratedText, Generation, Tokens

if TYPE_CHECKING:
    from shard.sampling import ChosenTokens, VerifiedTokens


class BlockRegistry(Protocol):
    """Where blocks full of computed keys/values are cached for later prompts (the runner's prefix cache)."""

    block_size: int

    def register_blocks(self, blocks: Sequence[int], keys: Sequence[bytes], first: int) -> None: ...


class Postprocessor:
    def __init__(self, tokenizer: Tokenizer, special_ids: frozenset[int],
                 prefix_cache: BlockRegistry | None = None) -> None:
        self.tokenizer = tokenizer
        self.special_ids = special_ids
        self.prefix_cache = prefix_cache  # None: prefix caching is off

    def apply(self, plan: StepPlan[RequestState], prompt_logprobs: Sequence[list[float]],
              chosen: ChosenTokens | None, verified: Sequence[VerifiedTokens] = ()) -> list[Generation]:
        """Apply a step that ran: `prompt_logprobs` per chunk of the plan (empty for a request that did not
        ask for them), `chosen` the tokens of plan.emitting in its order (None when nobody emits),
        `verified` the tokens of plan.verifying in its order. The generations come in that order too."""
        generations = self._apply_chosen(plan, prompt_logprobs, chosen)
        for chunk, tokens in zip(plan.verifying, verified, strict=True):
            generations.append(self._apply_verified(chunk.request, chunk.start, tokens))
        return generations

    def _apply_verified(self, request: RequestState, start: int, verified: VerifiedTokens) -> Generation:
        """A request that verified drafts: its tokens one at a time, exactly as one step each would emit
        them, up to where it finishes (a stop sequence, EOS or max_new_tokens may land on any of them).

        The cache then holds its newest token and the drafts accepted before the last emitted token (their
        keys/values were computed after the right tokens); what rejected drafts wrote lies past the cached
        length, is never keyed for the prefix cache, and is overwritten by the next step."""
        generation: Generation | None = None
        for i, token_id in enumerate(verified.ids):
            top = verified.top_tokens[i] if request.top_n_tokens else None
            step = self._emit(request, token_id, verified.logprobs[i], top)
            if generation is None:
                generation = step
            else:
                tokens, more = generation.tokens, step.tokens
                tokens.ids += more.ids
                tokens.logprobs += more.logprobs
                tokens.texts += more.texts
                tokens.is_special += more.is_special
                generation.top_tokens += step.top_tokens
                generation.generated_text = step.generated_text
            if request.finish_reason is not None:
                break
        assert generation is not None
        # Positions start .. start + emitted - 1 hold the newest token and the drafts emitted before the last
        # token: the last emitted token is the new newest, computed at the next step.
        request.cached_length = start + len(generation.tokens.ids)
        if self.prefix_cache is not None:
            self._cache_full_blocks(request, self.prefix_cache)
        return generation

    def _apply_chosen(self, plan: StepPlan[RequestState], prompt_logprobs: Sequence[list[float]],
                      chosen: ChosenTokens | None) -> list[Generation]:
        for request in plan.decoding:
            request.cached_length += 1
        for chunk, values in zip(plan.chunks, prompt_logprobs, strict=True):
            chunk.request.cached_length = chunk.end
            chunk.request.prefill_logprob_values.extend(values)
        if self.prefix_cache is not None:
            for request in plan.decoding:
                self._cache_full_blocks(request, self.prefix_cache)
            for chunk in plan.chunks:
                self._cache_full_blocks(chunk.request, self.prefix_cache)
        if chosen is None:
            return []
        generations = []
        for i, (request, _) in enumerate(plan.emitting):
            # The emitting requests after the decoding ones are those whose prompt just completed.
            first_token = i >= len(plan.decoding)
            top = chosen.top_tokens[i] if request.top_n_tokens else None
            generation = self._emit(request, chosen.ids[i], chosen.logprobs[i], top)
            if first_token:
                generation.cached_prompt_tokens = request.reused_prompt_tokens
                if request.prefill_logprobs:
                    generation.prefill_tokens = self._prefill_tokens(request)
            generations.append(generation)
        return generations

    @staticmethod
    def _cache_full_blocks(request: RequestState, cache: BlockRegistry) -> None:
        """Key the blocks the step filled (every position in them computed) and hand them to the cache."""
        size = cache.block_size
        known = len(request.block_hashes)
        if request.cached_length // size <= known:
            return
        parent = request.block_hashes[-1] if known else None
        request.block_hashes += chain_hashes(parent, request.all_ids[known * size: request.cached_length], size)
        cache.register_blocks(request.block_table, request.block_hashes, known)

    def _emit(self, request: RequestState, token_id: int, logprob: float,
              top: tuple[list[int], list[float]] | None) -> Generation:
        request.all_ids.append(token_id)
        special = token_id in self.special_ids
        raw, released, matched = request.detokenizer.step(token_id), "", False
        if not special:
            released, matched = request.stop_filter.push(raw)
        grammar_complete = request.matcher is not None and consume(request.matcher, token_id)
        request.finish_reason = request.stopping.check(token_id, matched, grammar_complete)
        if request.finish_reason is not None and not matched:
            tail, tail_matched = request.stop_filter.push(request.detokenizer.finish())
            released += tail if tail_matched else tail + request.stop_filter.flush()
        request.text += released
        # A special token shows its own string; text it flushed at the end is in generated_text only.
        text = raw if special else released
        generation = Generation(request_id=request.id,
                                tokens=Tokens(ids=[token_id], logprobs=[logprob], texts=[text], is_special=[special]))
        if top is not None:
            generation.top_tokens.append(self._tokens(*top))
        if request.finish_reason is not None:
            params = request.sampler.params
            generation.generated_text = GeneratedText(
                text=request.text, generated_tokens=len(request.generated_ids), finish_reason=request.finish_reason,
                seed=params.seed if params.do_sample else None)
        return generation

    def _prefill_tokens(self, request: RequestState) -> Tokens:
        # The first prompt token has no logprob: nothing comes before it.
        return self._tokens(request.all_ids[: request.input_length], [float("nan")] + request.prefill_logprob_values)

    def _tokens(self, ids: list[int], logprobs: list[float]) -> Tokens:
        return Tokens(ids=ids, logprobs=logprobs,
                      texts=[self.tokenizer.decode([i], skip_special_tokens=False) for i in ids],
                      is_special=[i in self.special_ids for i in ids])
