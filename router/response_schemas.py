"""Response models of the TGI-native API (`/generate`, `/generate_stream`, `/`, `/tokenize`, `/info`,
`/live`) and the error body every route answers with.

Field names, order and nullability follow TGI's serde structs (router/src/lib.rs): a field that TGI skips
when empty (`skip_serializing_if = "Option::is_none"`) is `omitted_when_none` here, every other None is a
JSON `null` on the wire. `router.responses` builds these from stream events; `router.openapi` publishes
their JSON schemas (serialization mode), so the document describes exactly what is sent.

The models read router values by attribute (`from_attributes`): a `router.types.Token` NamedTuple is a valid
`Token` input, so a list of tokens converts in one validation call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import SkipJsonSchema

from router.types import FinishReason

# Non-finite floats are not JSON: a NaN logprob is a bug that must fail loudly, not become `null` or `NaN`.
RESPONSE_CONFIG = ConfigDict(allow_inf_nan=False, from_attributes=True, frozen=True)


def _is_none(value: object) -> bool:
    return value is None


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def omitted_when_none(description: str | None = None) -> Any:
    """A field left out of the JSON when it is None. Annotate it `T | SkipJsonSchema[None]`: the schema then
    says "T, not required" rather than "T or null", which is never sent."""
    return Field(default=None, exclude_if=_is_none, description=description, json_schema_extra=_without_default)


class Token(BaseModel):
    model_config = RESPONSE_CONFIG

    id: int
    text: str
    logprob: float | None
    special: bool


class PrefillToken(BaseModel):
    """A prompt token; the first one has no logprob."""

    model_config = RESPONSE_CONFIG

    id: int
    text: str
    logprob: float | None


class BestOfSequence(BaseModel):
    """One more candidate of a `best_of` request (never sent while best_of > 1 is refused)."""

    model_config = RESPONSE_CONFIG

    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] | SkipJsonSchema[None] = omitted_when_none("only with top_n_tokens")


class Details(BaseModel):
    model_config = RESPONSE_CONFIG

    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = Field(description="the seed used, when sampling")
    prefill: list[PrefillToken] = Field(description="prompt tokens, filled with decoder_input_details")
    tokens: list[Token]
    top_tokens: list[list[Token]] | SkipJsonSchema[None] = omitted_when_none("only with top_n_tokens")
    best_of_sequences: list[BestOfSequence] | SkipJsonSchema[None] = omitted_when_none("only with best_of")


class GenerateResponse(BaseModel):
    """Body of `/generate`."""

    model_config = RESPONSE_CONFIG

    generated_text: str
    details: Details | SkipJsonSchema[None] = omitted_when_none("only when the request asked for it")


class CompatGenerateResponse(RootModel[Annotated[list[GenerateResponse], Field(min_length=1, max_length=1)]]):
    """Body of `POST /` without streaming: a list with one `/generate` answer."""


class StreamDetails(BaseModel):
    model_config = RESPONSE_CONFIG

    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(BaseModel):
    """One `data:{json}` event per token; the last one carries generated_text (and details if asked)."""

    model_config = RESPONSE_CONFIG

    index: int = Field(ge=1, description="counts from 1")
    token: Token
    top_tokens: list[Token] | SkipJsonSchema[None] = omitted_when_none("only with top_n_tokens")
    generated_text: str | None = Field(description="the whole text, on the last event only")
    details: StreamDetails | None = Field(description="on the last event, when the request asked for details")


class ErrorResponse(BaseModel):
    """Body of every error answered before the first byte, and of an error event in a stream."""

    model_config = RESPONSE_CONFIG

    error: str = Field(description="what went wrong, for people")
    error_type: str = Field(description="a stable kind, for programs", examples=[
        "validation", "overloaded", "generation", "incomplete_generation", "template_error", "unauthorized",
        "unhealthy"])


class SimpleToken(BaseModel):
    model_config = RESPONSE_CONFIG

    id: int
    text: str
    start: int = Field(description="character offset")
    stop: int = Field(description="character offset, exclusive")


class TokenizeResponse(RootModel[list[SimpleToken]]):
    """Body of `/tokenize`: the tokens, with character offsets into `inputs`."""


class Info(BaseModel):
    """Body of `/info`: the model and the server's limits."""

    model_config = RESPONSE_CONFIG

    model_id: str
    model_sha: str | None
    model_pipeline_tag: str | None
    model_dtype: str | None
    model_device_type: str | None
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int
    max_client_batch_size: int
    router: str
    version: str
    sha: str | None
    docker_label: str | None
    max_batch_total_tokens: int
    max_batch_prefill_tokens: int
    waiting_served_ratio: float
    max_waiting_tokens: int
    max_batch_size: int | None


class Liveness(BaseModel):
    """Body of `/live` while the process makes progress."""

    model_config = RESPONSE_CONFIG

    status: Literal["alive"]
