"""Request models of the OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`).

Same conventions as `router.schemas` (strict JSON types, unknown keys ignored, `null` = default);
ranges are left to `router.validation.Validator`, which sees these requests as native
`GenerateParameters` (`to_generate_parameters`), so both APIs share one set of rules and messages.
Every nested object is a model of its own (tools, tool calls, tool_choice, response_format, content
parts), so that a malformed one is a 422 naming the field, and the published OpenAPI document
(router/openapi_components.py, from `model_json_schema()`) describes exactly what is accepted;
tests/router/test_openai_fuzz.py holds the two to each other. Objects that reach the chat template
(tools, tool calls) are checked against their model but kept as the client sent them.

Where OpenAI and TGI differ, the mapping follows TGI's router (lib.rs / server.rs) except where noted:
- temperature: 0 means greedy; anything else, *including no temperature*, samples (TGI:
  `Some(0.0) => (do_sample=false, temperature=None), other => (true, other)`).
- max_tokens absent: all the room left under max_total_tokens (TGI v3; v2 used 100).
- ours: presence_penalty is OpenAI's additive penalty (TGI turns it into repetition_penalty + 2).
- ours: top_p 1.0 means "off" (TGI passes it on and its validator refuses it), and top_p is
  dropped with temperature 0 so that greedy stays greedy (its range is still checked).
- tool_choice: besides OpenAI's forms, a bare tool name (TGI's shorthand); ours: a named tool must be
  one of `tools`, and `required` needs tools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from router.chat_template import flatten_content
from router.schemas import _MODEL_CONFIG, U32, U64, GenerateParameters, Grammar, Utf8Str, _require_utf8
from router.validation import ValidationError, _parse

# OpenAI's limits: chat top_logprobs 0..20, legacy completions logprobs 0..5. The server's own
# --max-top-n-tokens (default 5) is then enforced by the validator on `top_n_tokens`.
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
TOOL_CHOICE_KEYWORDS = ("auto", "none", "required")



def _not_empty(value: str) -> str:
    if not value:
        raise PydanticCustomError("empty", "must not be empty")
    return value


# A non-empty Utf8Str. (Field(min_length=1) would report lone surrogates as "unable to parse raw data".)
Name = Annotated[Utf8Str, AfterValidator(_not_empty), Field(json_schema_extra={"minLength": 1})]


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


def _as_sent(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Check `value` against the annotated model (its errors, at their locations), keep it as sent: the
    chat template sees the client's object, key order and extra keys included, as it did before the check."""
    handler(value)
    return value


# ---- tools -----------------------------------------------------------------------------------------


class FunctionDefinition(BaseModel):
    """A function the model may call: `tools[].function`."""

    model_config = _MODEL_CONFIG

    name: Name
    description: Utf8Str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="a JSON schema of the arguments")
    strict: bool | None = None


class Tool(BaseModel):
    """An entry of `tools`."""

    model_config = _MODEL_CONFIG

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = _MODEL_CONFIG

    name: Name


class NamedToolChoice(BaseModel):
    """`tool_choice` naming one tool; `type` may be left out (huggingface_hub sends only `function`)."""

    model_config = _MODEL_CONFIG

    type: Literal["function"] = "function"
    function: FunctionName


class FunctionCall(BaseModel):
    """`function` of a tool call in an assistant message."""

    model_config = _MODEL_CONFIG

    name: Name
    # OpenAI sends a JSON string; TGI and many chat templates take an object
    arguments: Utf8Str | dict[str, Any] = Field(description="the arguments: a JSON string or an object")

    @field_validator("arguments", mode="wrap")
    @classmethod
    def _string_or_object(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        if isinstance(value, str | dict):
            return handler(value)
        raise PydanticCustomError("arguments_type", "must be a JSON string or an object")


class ToolCall(BaseModel):
    """An entry of an assistant message's `tool_calls`."""

    model_config = _MODEL_CONFIG

    id: Utf8Str
    type: Literal["function"]
    function: FunctionCall


if TYPE_CHECKING:
    SentTool = dict[str, Any]
    SentToolCall = dict[str, Any]
else:
    SentTool = Annotated[Tool, WrapValidator(_as_sent)]
    SentToolCall = Annotated[ToolCall, WrapValidator(_as_sent)]


# ---- response_format -------------------------------------------------------------------------------


class ResponseFormatText(BaseModel):
    model_config = _MODEL_CONFIG

    type: Literal["text"]


class ResponseFormatJsonObject(BaseModel):
    model_config = _MODEL_CONFIG

    type: Literal["json_object"]
    value: dict[str, Any] | None = Field(default=None, description="ours: a JSON schema; absent, any object")


class JsonSchemaFormat(BaseModel):
    model_config = _MODEL_CONFIG

    name: Utf8Str | None = None
    description: Utf8Str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema the answer must fit")
    strict: bool | None = None


class ResponseFormatJsonSchema(BaseModel):
    """OpenAI's `{"type": "json_schema", "json_schema": {...}}`, or TGI's `{"type": "json_schema", "value": {...}}`."""

    model_config = ConfigDict(**_MODEL_CONFIG,
                              json_schema_extra={"anyOf": [{"required": ["json_schema"]}, {"required": ["value"]}]})

    type: Literal["json_schema"]
    # Either one (the schema's anyOf says so); the None default is never validated, so null is refused.
    json_schema: JsonSchemaFormat = None  # type: ignore[assignment]
    value: JsonSchemaFormat = Field(default=None, description="TGI's spelling of `json_schema`")  # type: ignore[assignment]


class ResponseFormatJson(BaseModel):
    """TGI's grammar form: `{"type": "json", "value": <JSON schema>}`."""

    model_config = _MODEL_CONFIG

    type: Literal["json"]
    value: Any = Field(description="a JSON schema")


class ResponseFormatRegex(BaseModel):
    """TGI's grammar form: `{"type": "regex", "value": <regular expression>}`."""

    model_config = _MODEL_CONFIG

    type: Literal["regex"]
    value: Utf8Str


RESPONSE_FORMATS: dict[str, type[BaseModel]] = {
    "text": ResponseFormatText,
    "json_object": ResponseFormatJsonObject,
    "json_schema": ResponseFormatJsonSchema,
    "json": ResponseFormatJson,
    "regex": ResponseFormatRegex,
}


def _response_format(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One model per `type` (only that one reports errors), kept as sent for `_grammar`."""
    if not isinstance(value, dict):
        raise PydanticCustomError("response_format", "must be an object with a `type`")
    kind = value.get("type")
    model = RESPONSE_FORMATS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise PydanticCustomError(
            "response_format",
            "`type` must be one of text, json_object, json_schema, json, regex. Given: {kind}",
            {"kind": repr(kind)},
        )
    if kind == "json_schema":
        spec = value.get("json_schema", value.get("value"))
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise PydanticCustomError("response_format", "`json_schema.schema` must be a JSON schema object")
    if kind in ("json", "regex") and "value" not in value:
        raise PydanticCustomError("response_format", "a {kind} response format needs a `value`", {"kind": kind})
    if kind == "regex" and not isinstance(value["value"], str):
        raise PydanticCustomError("response_format", "a regex response format needs a string `value`")
    model.model_validate(value)
    return value


if TYPE_CHECKING:
    SentResponseFormat = dict[str, Any]
else:
    SentResponseFormat = Annotated[
        ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema | ResponseFormatJson
        | ResponseFormatRegex,
        Field(discriminator="type"),
        WrapValidator(_response_format),
    ]


def _grammar(response_format: dict[str, Any] | None) -> Grammar | None:
    """OpenAI's response_format (text | json_object | json_schema) or TGI's grammar form
    ({"type": "json" | "regex", "value"}) as a native Grammar; None for plain text. The format has been
    checked by `_response_format`."""
    if response_format is None:
        return None
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar(type="json", value=response_format.get("value") or {"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema", response_format.get("value"))
        return Grammar(type="json_schema", value={"schema": spec["schema"], "strict": spec.get("strict") is True})
    return Grammar(type=kind, value=response_format["value"])


# ---- messages --------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = _MODEL_CONFIG

    type: Literal["text"]
    text: Utf8Str


_TEXT_PARTS = TypeAdapter(list[TextPart])


def _content(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # One clear message instead of pydantic's error per member of the union.
    if value is None:
        return value
    if isinstance(value, str):
        return _require_utf8(value)
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
    return _TEXT_PARTS.validate_python(value)


class ChatMessage(BaseModel):
    model_config = _MODEL_CONFIG

    role: Name = Field(description="system, developer, user, assistant, tool, or a role the chat template knows")
    content: Annotated[Utf8Str | list[TextPart] | None, WrapValidator(_content)] = None
    name: Utf8Str | None = None
    tool_calls: list[SentToolCall] | None = None
    tool_call_id: Utf8Str | None = None

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


# ---- requests --------------------------------------------------------------------------------------


_BIAS_MAP = TypeAdapter(dict[str, float], config={"strict": True, "allow_inf_nan": False})
_BIAS_LIST = TypeAdapter(list[float], config={"strict": True, "allow_inf_nan": False})


def _logit_bias(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # By JSON type, so that only the form that was meant reports errors; a well-formed bias is then refused.
    if value is None:
        return value
    if isinstance(value, dict):
        value = _BIAS_MAP.validate_python(value)
    elif isinstance(value, list):
        value = _BIAS_LIST.validate_python(value)
    else:
        raise PydanticCustomError("logit_bias_type", "must be an object of token ids to biases (or a list of biases)")
    if value:
        raise PydanticCustomError("unsupported", "not supported by this server yet")
    return value


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
    logit_bias: Annotated[dict[str, float] | list[float] | None, WrapValidator(_logit_bias)] = None
    user: Utf8Str | None = None

    @field_validator("stop", mode="before", json_schema_input_type=Utf8Str | list[Utf8Str] | None)
    @classmethod
    def _stop_shape(cls, value: object) -> object:
        return _stop_list(value)

    @field_validator("stream", "ignore_eos", mode="before", json_schema_input_type=bool | None)
    @classmethod
    def _null_is_false(cls, value: object) -> object:
        return False if value is None else value

    @field_validator("top_p")
    @classmethod
    def _top_p_range(cls, value: float | None) -> float | None:
        # checked here because greedy requests drop top_p before the validator sees it
        if value is not None and not 0.0 < value <= 1.0:
            raise PydanticCustomError("top_p_range", "must be > 0.0 and <= 1.0")
        return value

    @field_validator("n")
    @classmethod
    def _n_is_one(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise PydanticCustomError(
                "unsupported", "only 1 is supported (one choice per request). Given: {n}", {"n": value}
            )
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


def _tool_choice(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # By JSON type, so that only the form that was meant reports errors.
    if value is None or isinstance(value, str):
        return handler(value)
    if isinstance(value, dict):
        return NamedToolChoice.model_validate(value)
    raise PydanticCustomError(
        "tool_choice_type",
        "must be 'auto', 'none', 'required', a tool's name, or an object with `function.name`",
    )


class ChatCompletionRequest(_OpenAIRequest):
    """Body of `/v1/chat/completions`."""

    messages: list[ChatMessage]
    # OpenAI's newer name for max_tokens; it wins when both are given
    max_completion_tokens: U32 | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: SentResponseFormat | None = None
    tools: list[SentTool] | None = None
    tool_choice: Annotated[Utf8Str | NamedToolChoice | None, WrapValidator(_tool_choice)] = Field(
        default=None,
        description="'auto', 'none', 'required', the name of one of `tools` (TGI's shorthand), or the named form; "
        "a named tool must be one of `tools`, and 'required' needs `tools`",
    )
    tool_prompt: Utf8Str | None = None  # TGI's extension: the text put before the tool list
    parallel_tool_calls: bool | None = Field(default=None, description="false: at most one tool call per answer")

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise PydanticCustomError("messages_empty", "must contain at least one message")
        return value

    @model_validator(mode="after")
    def _shadowed_max_tokens(self) -> ChatCompletionRequest:
        # max_completion_tokens wins, so the validator never sees max_tokens: check it here
        if self.max_completion_tokens is not None and self.max_tokens is not None and self.max_tokens <= 0:
            raise PydanticCustomError("max_tokens", "`max_tokens` must be strictly positive")
        return self

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        names = [tool["function"]["name"] for tool in self.tools or []]
        if choice == "required" and not names:
            raise PydanticCustomError("tool_choice", "`tool_choice`: 'required' needs `tools`")
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        if name is not None and name not in TOOL_CHOICE_KEYWORDS and name not in names:
            raise PydanticCustomError(
                "tool_choice",
                "`tool_choice`: {name} is not 'auto', 'none', 'required' or the name of one of `tools` ({names})",
                {"name": repr(name), "names": ", ".join(names) or "none given"},
            )
        if names and name != "none" and _grammar(self.response_format) is not None:
            # as TGI: the tool calls are a grammar of their own
            raise PydanticCustomError("response_format", "`response_format` and `tools` cannot be used together")
        return self

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
    response_format: SentResponseFormat | None = None
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
        params["grammar"] = _grammar(self.response_format)
        return GenerateParameters(**params)


def parse_chat_request(body: bytes | str) -> ChatCompletionRequest:
    """Body of `/v1/chat/completions` -> ChatCompletionRequest, or ValidationError (422)."""
    return _parse(ChatCompletionRequest, body)


def parse_completion_request(body: bytes | str) -> CompletionRequest:
    """Body of `/v1/completions` -> CompletionRequest, or ValidationError (422)."""
    return _parse(CompletionRequest, body)
