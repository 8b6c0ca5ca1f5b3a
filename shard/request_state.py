"""One request inside the shard: its ids, cache blocks, token chooser, stop rules and text.

Created when the request is admitted; from then on only shard/postprocess.py changes it (the block
table aside, which admission sets and release clears, what admission found in the prefix cache, and the
n-gram index the drafter keeps up to date).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llguidance
from tokenizers import Tokenizer

from shard.detokenize import IncrementalDetokenizer
from shard.sampling import RequestSampler
from shard.speculation import RequestDrafting
from shard.stopping import FinishReason, StoppingCriteria, StopSequenceFilter
from shard.types import Request


@dataclass
class RequestState:
    id: int
    input_length: int
    max_new_tokens: int
    all_ids: list[int]  # prompt + generated so far
    sampler: RequestSampler
    stopping: StoppingCriteria
    detokenizer: IncrementalDetokenizer
    stop_filter: StopSequenceFilter
    top_n_tokens: int = 0
    prefill_logprobs: bool = False
    # Tokens whose keys/values are in the cache; the newest generated token is not, until the next step.
    cached_length: int = 0
    finish_reason: FinishReason | None = field(default=None)
    # Text released to the client so far: generated_text at the end.
    text: str = ""
    # The cache blocks the request holds (from the runner's block manager; a runner without paged
    # blocks keeps what it needs to give the room back here).
    block_table: list[int] = field(default_factory=list)
    # Prefix-cache keys of the leading blocks full of computed keys/values (shard/block_manager.py
    # chain_hashes): those reused at admission, then each block as the postprocess sees it fill.
    block_hashes: list[bytes] = field(default_factory=list)
    # Prompt tokens reused from the prefix cache at admission (reported with the first generation).
    reused_prompt_tokens: int = 0
    # Logprobs of prompt tokens 1.. as chunks are prefilled (decoder_input_details).
    prefill_logprob_values: list[float] = field(default_factory=list)
    # The request's grammar state (shard/grammar.py); None when its output is free.
    matcher: llguidance.LLMatcher | None = None
    # Its n-gram index and recent acceptance, for drafting (shard/speculation.py); made at its first step.
    drafting: RequestDrafting | None = None

    @classmethod
    def admit(cls, request: Request, tokenizer: Tokenizer, eos_token_ids: frozenset[int],
              special_ids: frozenset[int], matcher: llguidance.LLMatcher | None = None) -> RequestState:
        """The state of a new request: its prompt ids (encoded here if the router sent text), truncated."""
        ids = list(request.input_ids) or tokenizer.encode(request.inputs).ids
        if request.truncate and len(ids) > request.truncate:
            ids = ids[-request.truncate:]
        max_new = max(1, request.max_new_tokens)
        return cls(
            id=request.id,
            input_length=len(ids),
            max_new_tokens=max_new,
            all_ids=ids,
            sampler=RequestSampler(request.parameters),
            stopping=StoppingCriteria(eos_token_ids, max_new, request.ignore_eos_token),
            detokenizer=IncrementalDetokenizer(tokenizer, ids, special_ids),
            stop_filter=StopSequenceFilter(list(request.stop_sequences)),
            top_n_tokens=request.top_n_tokens,
            prefill_logprobs=request.prefill_logprobs,
            matcher=matcher,
        )

    @property
    def generated_ids(self) -> list[int]:
        return self.all_ids[self.input_length:]

    @property
    def max_tokens(self) -> int:
        return self.input_length + self.max_new_tokens
