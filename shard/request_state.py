"""One request inside the shard: its ids, cache blocks, token chooser, stop rules and text."""

from __future__ import annotations

from dataclasses import dataclass, field

from shard.detokenize import IncrementalDetokenizer
from shard.sampling import RequestSampler
from shard.stopping import FinishReason, StoppingCriteria, StopSequenceFilter


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
    # Where this request's keys/values live: paged cache blocks, or a model's own cache object.
    block_table: list[int] = field(default_factory=list)
    model_cache: object | None = None
    # Logprobs of prompt tokens 1.. as chunks are prefilled (decoder_input_details).
    prefill_logprob_values: list[float] = field(default_factory=list)

    @property
    def generated_ids(self) -> list[int]:
        return self.all_ids[self.input_length:]

    @property
    def max_tokens(self) -> int:
        return self.input_length + self.max_new_tokens
