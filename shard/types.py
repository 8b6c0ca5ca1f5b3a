"""The shard's own records of what comes in and goes out of a step: plain dataclasses, no protobuf, no torch.

shard/server.py converts the gRPC messages to and from these; the engine, scheduler and postprocess
work on them alone, so they can be tested and reused without the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.sampling import SamplingParameters
from shard.stopping import FinishReason


@dataclass(frozen=True)
class Request:
    """A request as the router sends it: prompt ids (or text to encode), limits, sampling and stop rules."""

    id: int
    input_ids: list[int] = field(default_factory=list)
    inputs: str = ""  # encoded here only when input_ids is empty
    truncate: int = 0  # keep the last `truncate` prompt ids; 0: all
    parameters: SamplingParameters = field(default_factory=SamplingParameters)
    max_new_tokens: int = 1
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    top_n_tokens: int = 0
    prefill_logprobs: bool = False


@dataclass
class Tokens:
    """Parallel lists, one entry per token."""

    ids: list[int]
    logprobs: list[float]
    texts: list[str]
    is_special: list[bool]


@dataclass
class GeneratedText:
    """The end of a request: its whole text and why it stopped."""

    text: str
    generated_tokens: int
    finish_reason: FinishReason
    seed: int | None = None  # set for sampled requests only


@dataclass
class Generation:
    """What one request produced in one step."""

    request_id: int
    tokens: Tokens
    prefill_tokens: Tokens | None = None  # the prompt's tokens, with the step that finished its prefill
    top_tokens: list[Tokens] = field(default_factory=list)
    generated_text: GeneratedText | None = None  # set when the request finished in this step
    # With a request's first token: how many of its prompt tokens came from the prefix cache.
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class CachedBatch:
    """A batch whose requests stay in the shard between steps, as the router sees it."""

    id: int
    request_ids: list[int]
    size: int
    max_tokens: int
    current_tokens: int


@dataclass
class StepResult:
    generations: list[Generation]
    batch: CachedBatch | None
    forward_ns: int
    # Everything after the forward: prompt logprobs, token choice, detokenizing, stop checks. (The
    # proto's field for it is named decode_ns; that name stays on the wire.)
    sample_and_postprocess_ns: int
    # Speculation (shard/speculation.py): draft tokens verified in this step, and how many were accepted.
    draft_tokens: int = 0
    accepted_tokens: int = 0
