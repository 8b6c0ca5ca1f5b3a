"""Request models of the TGI-native API (`/generate`, `/generate_stream`, `/`, `/tokenize`).

Types follow TGI's serde structs (router/src/lib.rs): JSON types are checked strictly (no "10" for an
integer, no 1 for a boolean, no bare string for `stop`), while numeric *ranges* are left to
`router.validation`, which reports them in TGI's own words. TGI's request structs do not use
`deny_unknown_fields`, so unknown keys are accepted and ignored here too; clients such as
huggingface_hub send keys that older servers do not know.

Two deliberate leniencies over serde: an explicit `null` means "the default" for every field
(serde rejects `null` for its non-Option fields), and integers are only bounded from above by
their wire width, so `max_new_tokens: -1` gets TGI's "must be strictly positive" message instead
of a type error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

U32_MAX = 2**32 - 1
I32_MAX = 2**31 - 1
U64_MAX = 2**64 - 1


def _require_utf8(value: str) -> str:
    # json.loads accepts lone surrogates ("\ud800"); they cannot be encoded as UTF-8, so the
    # tokenizer and the gRPC layer would fail on them later. serde_json rejects them too.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("string is not valid UTF-8 (lone surrogate)") from err
    return value


Utf8Str = Annotated[str, AfterValidator(_require_utf8)]
U32 = Annotated[int, Field(le=U32_MAX)]
I32 = Annotated[int, Field(le=I32_MAX)]
USize = Annotated[int, Field(le=U64_MAX)]
U64 = Annotated[int, Field(ge=0, le=U64_MAX)]

# strict: JSON types must match (serde semantics); allow_inf_nan: NaN would slip through every
# range comparison (`nan <= 0` is False), so non-finite floats are refused at the door.
_MODEL_CONFIG = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore", frozen=True)


class Grammar(BaseModel):
    """What the output must follow (router/grammar.py compiles it):
    `{"type": "json" | "json_object", "value": <JSON schema>}`, `{"type": "regex", "value": "<regex>"}` or
    `{"type": "json_schema", "value": {"name"?, "schema": <JSON schema>, "strict"?}}`. A JSON schema may
    also be sent as a string holding it (TGI's clients do)."""

    model_config = _MODEL_CONFIG

    type: Literal["json", "regex", "json_object", "json_schema"]
    value: Any = Field(description="a JSON schema, a regular expression, or {name?, schema, strict?}")

    @model_validator(mode="after")
    def _value_fits_type(self) -> Grammar:
        if self.type == "regex" and not isinstance(self.value, str):
            raise ValueError("a regex grammar needs a string `value`")
        spec = self.value if isinstance(self.value, dict) else {}
        if self.type == "json_schema" and not isinstance(spec.get("schema"), dict):
            raise ValueError("a json_schema grammar needs `value.schema`, a JSON schema object")
        return self


class GenerateParameters(BaseModel):
    """Every TGI generation parameter; `None` means 'not given' (TGI's Option)."""

    model_config = _MODEL_CONFIG

    best_of: USize | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    # OpenAI's presence penalty (not in TGI's native API, which maps it onto repetition_penalty)
    presence_penalty: float | None = None
    top_k: I32 | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    # None: use the room left under max_total_tokens (resolved by the validator)
    max_new_tokens: U32 | None = None
    return_full_text: bool | None = None
    stop: list[Utf8Str] = Field(default_factory=list)
    # ours (vLLM's name): keep generating past EOS up to max_new_tokens, for benchmarks
    ignore_eos: bool = False
    truncate: USize | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: U64 | None = None
    top_n_tokens: U32 | None = None
    grammar: Grammar | None = None
    adapter_id: Utf8Str | None = None

    @field_validator("do_sample", "watermark", "details", "decoder_input_details", "ignore_eos", mode="before")
    @classmethod
    def _null_is_false(cls, value: object) -> object:
        return False if value is None else value

    @field_validator("stop", mode="before")
    @classmethod
    def _null_is_no_stop(cls, value: object) -> object:
        return [] if value is None else value


class GenerateRequest(BaseModel):
    """Body of `/generate`, `/generate_stream` and the compat route `/` (which also reads `stream`)."""

    model_config = _MODEL_CONFIG

    inputs: Utf8Str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    # only the compat route `POST /` looks at this; the others ignore it like TGI does
    stream: bool = False

    @field_validator("parameters", mode="before")
    @classmethod
    def _null_is_default_parameters(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("stream", mode="before")
    @classmethod
    def _null_is_not_streaming(cls, value: object) -> object:
        return False if value is None else value


class TokenizeRequest(BaseModel):
    """Body of `/tokenize`. TGI reuses its GenerateRequest here, so `parameters` is accepted (and
    ignored); `add_special_tokens` is our addition, TGI always adds them."""

    model_config = _MODEL_CONFIG

    inputs: Utf8Str
    parameters: GenerateParameters | None = None
    add_special_tokens: bool = True

    @field_validator("add_special_tokens", mode="before")
    @classmethod
    def _null_is_true(cls, value: object) -> object:
        return True if value is None else value
