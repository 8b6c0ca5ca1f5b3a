"""Response models of the OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`,
`/v1/models`), in OpenAI's shapes; conventions as in `router.response_schemas` (a field that is left out
when empty is `omitted_when_none`, every other None is a JSON `null`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from router.response_schemas import RESPONSE_CONFIG, omitted_when_none

# OpenAI has no `stop_sequence`: a stop string and EOS both read `stop` (router.openai_routes maps them);
# `tool_calls` when the answer is tool calls that were completed.
OpenAIFinishReason = Literal["length", "stop", "tool_calls"]


class PromptTokensDetails(BaseModel):
    model_config = RESPONSE_CONFIG

    cached_tokens: int = Field(description="prompt tokens whose keys and values the prefix cache already held")


class Usage(BaseModel):
    model_config = RESPONSE_CONFIG

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


# ---- chat --------------------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    model_config = RESPONSE_CONFIG

    token: str
    logprob: float | None
    bytes: list[int] = Field(description="the token's raw bytes (a token may hold part of a character)")


class ChatTokenLogprob(BaseModel):
    model_config = RESPONSE_CONFIG

    token: str
    logprob: float | None
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    model_config = RESPONSE_CONFIG

    content: list[ChatTokenLogprob]


class AnsweredFunctionCall(BaseModel):
    model_config = RESPONSE_CONFIG

    name: str
    arguments: str = Field(description="the arguments as JSON text (a string, as OpenAI sends it)")


class AnsweredToolCall(BaseModel):
    model_config = RESPONSE_CONFIG

    id: str
    type: Literal["function"]
    function: AnsweredFunctionCall


class AssistantMessage(BaseModel):
    model_config = RESPONSE_CONFIG

    role: Literal["assistant"]
    content: str | None = Field(description="null when the answer is tool calls")
    tool_calls: list[AnsweredToolCall] | SkipJsonSchema[None] = omitted_when_none("the calls, when the model made some")


class ChatCompletionChoice(BaseModel):
    model_config = RESPONSE_CONFIG

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: OpenAIFinishReason


class ChatCompletion(BaseModel):
    """Body of `/v1/chat/completions` without streaming."""

    model_config = RESPONSE_CONFIG

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class ChunkFunctionCall(BaseModel):
    model_config = RESPONSE_CONFIG

    name: str | SkipJsonSchema[None] = omitted_when_none("in the call's first chunk only")
    arguments: str = Field(description="the next fragment of the arguments' JSON text")


class ChunkToolCall(BaseModel):
    """A piece of a streamed tool call; clients join the pieces by `index`."""

    model_config = RESPONSE_CONFIG

    index: int
    id: str | SkipJsonSchema[None] = omitted_when_none("in the call's first chunk only")
    type: Literal["function"] | SkipJsonSchema[None] = omitted_when_none("in the call's first chunk only")
    function: ChunkFunctionCall


class ChatDelta(BaseModel):
    model_config = RESPONSE_CONFIG

    role: Literal["assistant"] | SkipJsonSchema[None] = omitted_when_none("on the first chunk only")
    content: str | SkipJsonSchema[None] = omitted_when_none("left out in chunks of tool calls")
    tool_calls: list[ChunkToolCall] | SkipJsonSchema[None] = omitted_when_none()


class ChatCompletionChunkChoice(BaseModel):
    model_config = RESPONSE_CONFIG

    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: OpenAIFinishReason | None


class ChatCompletionChunk(BaseModel):
    """One `data: {json}` event per token; with stream_options.include_usage a last chunk with no choices
    carries usage; the stream ends with `data: [DONE]`."""

    model_config = RESPONSE_CONFIG

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | SkipJsonSchema[None] = omitted_when_none("on the last chunk (no choices), with include_usage")


# ---- completions -------------------------------------------------------------------------------------


class CompletionLogprobs(BaseModel):
    model_config = RESPONSE_CONFIG

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float | None]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    model_config = RESPONSE_CONFIG

    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: OpenAIFinishReason | None = Field(description="null on every streamed chunk but the last")


class Completion(BaseModel):
    """Body of `/v1/completions`: the whole answer, or (streaming) one event per token with a usage-only
    last chunk if asked."""

    model_config = RESPONSE_CONFIG

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | SkipJsonSchema[None] = omitted_when_none("always without streaming; then only with include_usage")


# ---- models ------------------------------------------------------------------------------------------


class Model(BaseModel):
    model_config = RESPONSE_CONFIG

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """Body of `/v1/models`: the one model this server serves."""

    model_config = RESPONSE_CONFIG

    object: Literal["list"]
    data: list[Model]
