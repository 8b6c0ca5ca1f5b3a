"""Typed values of the router's core: requests from validation to the queue and the batcher, and what
the shards answer, as router/shard_client.py converts it from protobuf (the core never sees `pb.*`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

# the record both sides share; imported from here by the router's modules
from common.sampling import SamplingParameters as SamplingParameters


@dataclass(frozen=True)
class StoppingParameters:
    max_new_tokens: int
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed validation: tokenised, limits checked, parameters resolved."""

    inputs: str
    input_ids: tuple[int, ...]
    sampling: SamplingParameters
    stopping: StoppingParameters
    truncate: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int = 0
    return_full_text: bool = False
    # seconds spent validating, for metrics and logs
    validation_seconds: float = field(default=0.0, compare=False)

    @property
    def input_length(self) -> int:
        return len(self.input_ids)


# ---- what goes to the shards -------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """New requests prefilled together, by request id (in queue order)."""

    id: int
    requests: dict[int, ValidRequest]
    max_tokens: int  # input + max_new_tokens of every request, summed


@dataclass(frozen=True)
class CachedBatch:
    """Requests whose KV cache the shards hold, as the shards report it after a step."""

    id: int
    request_ids: tuple[int, ...]
    size: int
    max_tokens: int
    current_tokens: int = 0


# ---- what comes back ---------------------------------------------------------------------------------


# Why a generation ended, in TGI's words: plain strings, as the wire has them. router/shard_client.py
# derives them from the names of pb.FinishReason (FINISH_REASON_EOS_TOKEN -> "eos_token");
# tests/router/test_shard_client.py checks that the two sets agree.
FinishReason = Literal["length", "eos_token", "stop_sequence"]


# Token and Generation are NamedTuples: one of each is built per streamed token on the batcher's hot path,
# and a tuple is built several times faster than a frozen dataclass (which sets each field through
# object.__setattr__).
class Token(NamedTuple):
    id: int
    text: str
    logprob: float | None  # None where the shard has none (the first prompt token)
    special: bool


@dataclass(frozen=True)
class Finished:
    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None


class Generation(NamedTuple):
    """One token of one request: its new token, and how it ended if it did. (A step that accepted speculated
    tokens gives a request several, in order: router/shard_client.py splits them.)"""

    request_id: int
    token: Token
    top_tokens: Sequence[Token] = ()
    prefill: Sequence[Token] = ()  # prompt tokens with logprobs (decoder_input_details), first step only
    finished: Finished | None = None
    # first generation only: prompt tokens whose KV the shard's prefix cache already held (not computed)
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class StepResult:
    """The shards' answer to a prefill or a decode step."""

    generations: list[Generation]
    batch: CachedBatch | None  # None when every request of the step finished
    forward_ns: int
    # sampling, detokenizing and stop checks after the forward (the wire calls it decode_ns, after TGI)
    sample_and_postprocess_ns: int
    # monotonic time the answer arrived, before it was converted (router overhead metric)
    received_at: float
    # speculation (--speculate): draft tokens the step verified, and how many of them were accepted
    draft_tokens: int = 0
    accepted_tokens: int = 0


@dataclass(frozen=True)
class ShardInfo:
    """What the router needs of the shards' Info."""

    dtype: str
    device_type: str
    block_size: int
    support_chunking: bool
