"""Typed values that flow from validation to the queue and the batcher."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParameters:
    """How the next token is chosen; neutral values mean 'off'."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    do_sample: bool = False
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


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
