"""Request models of the OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`).

Same conventions as `router.schemas` (strict JSON types, unknown keys ignored, `null` = default);
ranges are left to `router.validation.Validator`, which sees these requests as native
`GenerateParameters` (`to_generate_parameters`), so both APIs share one set of rules and messages.

Where OpenAI and TGI differ, the mapping follows TGI's router (lib.rs / server.rs) except where noted:
- temperature: 0 means greedy; anything else, *including no temperature*, samples (TGI:
  `Some(0.0) => (do_sample=false, temperature=None), other => (true, other)`).
- max_tokens absent: all the room left under max_total_tokens (TGI v3; v2 used 100).
- ours: presence_penalty is OpenAI's additive penalty (TGI turns it into repetition_penalty + 2).
- ours: top_p 1.0 means "off" (TGI passes it on and its validator refuses it), and top_p is
  dropped with temperature 0 so that greedy stays greedy.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from router.chat_template import flatten_content
from router.schemas import _MODEL_CONFIG, U32, U64, GenerateParameters, Grammar, Utf8Str
from router.validation import ValidationError, _parse

# OpenAI's limits: chat top_logprobs 0..20, legacy completions logprobs 0..5. The server's own
# --max-top-n-tokens (default 5) is then enforced by the validator on `top_n_tokens`.
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


def _stop_list(value: object) -> object:
    # OpenAI takes one stop string or a list; TGI's native API only a list.
    if value is None or isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    if isinstance(value, str):
        return [value]
    raise PydanticCustomError("stop_type", "must be a string or a list of strings")


def _sampling(temperature: float | None) -> tuple[bool, float | None]:
    """TGI's chat/completions rule: temperature 0 is greedy, everything else samples (OpenAI's
    default temperature is 1, which is sampling too)."""
    if temperature is not None and temperature == 0.0:
        return False, None
    return True, temperature


def _top_p(top_p: float | None) -> float | None:
    # 1.0 keeps every token, i.e. no nucleus filtering; OpenAI SDK users send it as "the default".
    return None if top_p == 1.0 else top_p


def _grammar(response_format: dict[str, Any] | None) -> Grammar | None:
    """OpenAI's response_format (text | json_object | json_schema) or TGI's grammar form
    ({"type": "json" | "regex", "value"}) as a native Grammar; None for plain text."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar(type="json", value=response_format.get("value") or {"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise PydanticCustomError("response_format", "`json_schema.schema` must be a JSON schema object")
        return Grammar(type="json", value=spec["schema"])
    if kind in ("json", "regex"):
        if "value" not in response_format:
            raise PydanticCustomError("response_format", "a {kind} response format needs a `value`", {"kind": kind})
        try:
            return Grammar(type=kind, value=response_format["value"])
        except ValueError as err:
            raise PydanticCustomError("response_format", "a regex response format needs a string `value`") from err
    raise PydanticCustomError(
        "response_format",
        "`type` must be one of text, json_object, json_schema, json, regex. Given: {kind}",
        {"kind": repr(kind)},
    )


class TextPart(BaseModel):
    model_config = _MODEL_CONFIG

    type: str
    text: Utf8Str


class ChatMessage(BaseModel):
    model_config = _MODEL_CONFIG

    role: Utf8Str
    content: Utf8Str | list[TextPart] | None = None
    name: Utf8Str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: Utf8Str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, value: object) -> object:
        # One clear message instead of pydantic's error per member of the union.
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise PydanticCustomError("content_type", "must be a string, a list of content parts or null")
        for index, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise PydanticCustomError(
                    "content_part",
                    "part {index} has type {kind}: only text parts are supported (this model takes text only)",
                    {"index": index, "kind": repr(kind)},
                )
        return value

    @model_validator(mode="after")
    def _has_body(self) -> ChatMessage:
        if self.content is None and not self.tool_calls:
            raise PydanticCustomError("message", "a message needs `content` (or `tool_calls`)")
        return self

    def template_dict(self) -> dict[str, Any]:
        """The message as the chat template sees it: content flattened to one string (TGI joins text
        parts with no separator), optional keys only when given (templates test `'name' in message`)."""
        content = self.content
        if isinstance(content, list):
            content = [part.model_dump() for part in content]
        out: dict[str, Any] = {"role": self.role, "content": flatten_content(content)}
        for key in ("name", "tool_calls", "tool_call_id"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class StreamOptions(BaseModel):
    model_config = _MODEL_CONFIG

    include_usage: bool | None = None


class _OpenAIRequest(BaseModel):
    """Fields common to both routes."""

    model_config = _MODEL_CONFIG

    model: Utf8Str | None = None  # any name is accepted: this server serves one model
    max_tokens: U32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: U64 | None = None
    stop: list[Utf8Str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool = False  # vLLM's extension, for benchmarks
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | list[float] | None = None
    user: Utf8Str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_shape(cls, value: object) -> object:
        return _stop_list(value)

    @field_validator("stream", mode="before")
    @classmethod
    def _null_is_not_streaming(cls, value: object) -> object:
        return False if value is None else value

    @field_validator("n")
    @classmethod
    def _n_is_one(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise PydanticCustomError(
                "unsupported", "only 1 is supported (one choice per request). Given: {n}", {"n": value}
            )
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "not supported by this server yet")
        return value

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    def _common_parameters(self, max_new_tokens: int | None) -> dict[str, Any]:
        do_sample, temperature = _sampling(self.temperature)
        return {
            "do_sample": do_sample,
            "temperature": temperature,
            # ours: TGI keeps top_p with temperature 0, and any warper turns sampling back on
            # (at temperature 1); OpenAI's temperature 0 means greedy, whatever top_p says.
            "top_p": _top_p(self.top_p) if do_sample else None,
            "seed": self.seed,
            "stop": self.stop or [],
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "ignore_eos": self.ignore_eos,
            "max_new_tokens": max_new_tokens,
            # finish_reason and token counts are needed for every OpenAI response (TGI sets it too)
            "details": True,
        }


class ChatCompletionRequest(_OpenAIRequest):
    """Body of `/v1/chat/completions`."""

    messages: list[ChatMessage]
    # OpenAI's newer name for max_tokens; it wins when both are given
    max_completion_tokens: U32 | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Utf8Str | dict[str, Any] | None = None
    tool_prompt: Utf8Str | None = None  # TGI's extension: the text put before the tool list

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise PydanticCustomError("messages_empty", "must contain at least one message")
        return value

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        _grammar(value)
        return value

    def chat_messages(self) -> list[dict[str, Any]]:
        """Plain dicts for `ChatTemplate.render`."""
        return [message.template_dict() for message in self.messages]

    def to_generate_parameters(self) -> GenerateParameters:
        max_new_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        params = self._common_parameters(max_new_tokens)
        # top_logprobs only means something with logprobs (OpenAI requires both); alternatives are
        # not computed when they would be thrown away.
        params["top_n_tokens"] = self.top_logprobs if self.logprobs else None
        params["grammar"] = _grammar(self.response_format)
        return GenerateParameters(**params)


class CompletionRequest(_OpenAIRequest):
    """Body of `/v1/completions` (OpenAI's legacy text completions)."""

    prompt: Utf8Str | list[Utf8Str]
    repetition_penalty: float | None = None
    suffix: Utf8Str | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: object) -> object:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            if not value:
                # TGI's message
                raise PydanticCustomError(
                    "prompt_empty", "Empty array detected. Do not use an empty array for the prompt."
                )
            return value
        raise PydanticCustomError("prompt_type", "must be a string or a list of strings (token ids are not supported)")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value is not None:
            raise PydanticCustomError(
                "unsupported", "Suffix is not supported and can be achieved by preprocessing the prompt."
            )
        return value

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs_bool(cls, value: object) -> object:
        # The legacy field is a count of alternatives; some clients send the chat API's boolean.
        if isinstance(value, bool):
            return 0 if value else None
        return value

    def prompts(self, max_client_batch_size: int) -> list[str]:
        """The prompts, one request each; more than --max-client-batch-size is refused like TGI."""
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if len(prompts) > max_client_batch_size:
            raise ValidationError(
                f"Number of prompts exceeds the maximum allowed batch size of {max_client_batch_size}"
            )
        return prompts

    def to_generate_parameters(self) -> GenerateParameters:
        params = self._common_parameters(self.max_tokens)
        params["repetition_penalty"] = self.repetition_penalty
        params["top_n_tokens"] = self.logprobs
        # echo: the prompt comes back in front of the completion
        params["return_full_text"] = bool(self.echo)
        return GenerateParameters(**params)


def parse_chat_request(body: bytes | str) -> ChatCompletionRequest:
    """Body of `/v1/chat/completions` -> ChatCompletionRequest, or ValidationError (422)."""
    return _parse(ChatCompletionRequest, body)


def parse_completion_request(body: bytes | str) -> CompletionRequest:
    """Body of `/v1/completions` -> CompletionRequest, or ValidationError (422)."""
    return _parse(CompletionRequest, body)
