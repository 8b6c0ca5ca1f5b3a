"""The `components/schemas` of the OpenAPI document, from the pydantic models themselves: request bodies
as the server parses them (validation mode), responses as it writes them (serialization mode: a field left
out when empty is not required). What the models cannot say (ranges that router.validation checks in TGI's
words, the forms before-validators accept) is added here, and tests/router/test_openapi.py holds the server
to every bound.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from router.openai_response_schemas import ChatCompletion, ChatCompletionChunk, Completion, ModelList
from router.openai_schemas import ChatCompletionRequest, CompletionRequest
from router.response_schemas import (
    CompatGenerateResponse,
    ErrorResponse,
    GenerateResponse,
    Info,
    Liveness,
    StreamResponse,
    TokenizeResponse,
)
from router.schemas import GenerateRequest, TokenizeRequest

REF = "#/components/schemas/"
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "GenerateRequest": GenerateRequest,
    "TokenizeRequest": TokenizeRequest,
    "ChatCompletionRequest": ChatCompletionRequest,
    "CompletionRequest": CompletionRequest,
}
# Every body the routes answer with, as the server builds it (router.responses, router.openai_routes).
RESPONSE_MODELS: dict[str, type[BaseModel]] = {
    "GenerateResponse": GenerateResponse,
    "CompatGenerateResponse": CompatGenerateResponse,
    "StreamResponse": StreamResponse,
    "ErrorResponse": ErrorResponse,
    "TokenizeResponse": TokenizeResponse,
    "Info": Info,
    "Liveness": Liveness,
    "ChatCompletion": ChatCompletion,
    "ChatCompletionChunk": ChatCompletionChunk,
    "Completion": Completion,
    "ModelList": ModelList,
}

# Ranges that router.validation checks (with TGI's messages) rather than the pydantic types, documented here;
# tests/router/test_openapi.py holds the validator to every bound. Limits set by flags (--max-stop-sequences,
# --max-top-n-tokens, --max-client-batch-size, token counts) are in /info, not here.
_OPENAI_RANGES: dict[str, dict[str, Any]] = {
    "temperature": {"minimum": 0, "description": "0 is greedy; any other value samples"},
    "top_p": {"exclusiveMinimum": 0, "maximum": 1, "description": "1 means no nucleus filtering"},
    "frequency_penalty": {"minimum": -2, "maximum": 2},
    "presence_penalty": {"minimum": -2, "maximum": 2},
    "max_tokens": {"minimum": 1, "description": "absent: all the room left under max_total_tokens"},
    "n": {"minimum": 1, "maximum": 1, "description": "one choice per request"},
}
GRAMMAR_RULES = ("the output follows this JSON schema or regex (router/grammar.py); one the grammar engine "
                 "refuses, one over 64 KiB, or one that takes over 250 ms to compile is refused (422, with the "
                 "engine's message)")
RANGES: dict[str, dict[str, dict[str, Any]]] = {
    "GenerateParameters": {
        "temperature": {"exclusiveMinimum": 0},
        "repetition_penalty": {"exclusiveMinimum": 0},
        "frequency_penalty": {"minimum": -2, "maximum": 2},
        "presence_penalty": {"minimum": -2, "maximum": 2},
        "top_k": {"minimum": 1},
        "top_p": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "typical_p": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "max_new_tokens": {"minimum": 1, "description": "absent: all the room left under max_total_tokens"},
        "truncate": {"minimum": 1, "description": "keep only the last `truncate` input tokens"},
        "top_n_tokens": {"minimum": 0, "description": "at most --max-top-n-tokens"},
        "best_of": {"minimum": 1, "description": "values above 1 are not supported by this server yet"},
        "watermark": {"description": "not supported by this server yet: `true` is refused"},
        "grammar": {"description": GRAMMAR_RULES},
        "adapter_id": {"description": "not supported by this server yet (no LoRA adapters)"},
        "stop": {"description": "at most --max-stop-sequences strings"},
    },
    "GenerateRequest": {"inputs": {"minLength": 1}},
    "ChatCompletionRequest": {
        **_OPENAI_RANGES,
        "max_completion_tokens": {"minimum": 1, "description": "OpenAI's newer name for max_tokens; wins over it"},
        "messages": {"minItems": 1},
        "logit_bias": {"description": "not supported by this server yet: refused unless empty"},
        "response_format": {"description": GRAMMAR_RULES + "; refused together with `tools` (unless tool_choice "
                                           "is 'none')"},
        "tools": {"description": "the model answers with calls of these (or, with tool_choice 'auto', in text); "
                                 "a `parameters` schema the grammar engine refuses is refused (422)"},
    },
    "CompletionRequest": {
        **_OPENAI_RANGES,
        "repetition_penalty": {"exclusiveMinimum": 0},
        "logit_bias": {"description": "not supported by this server yet: refused unless empty"},
        "suffix": {"description": "not supported: refused unless null"},
        "response_format": {"description": GRAMMAR_RULES},
    },
}


def _constrain(schema: dict[str, Any], constraints: dict[str, Any]) -> None:
    """Put range keywords on the non-null branch of an optional field, a description on the field."""
    constraints = dict(constraints)
    if "description" in constraints:
        schema["description"] = constraints.pop("description")
    if not constraints:
        return
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") not in (None, "null")]
    if len(branches) != 1:
        raise RuntimeError(f"cannot place {constraints} on {schema}")
    branches[0].update(constraints)


def _lift(models: dict[str, type[BaseModel]], mode: JsonSchemaMode) -> dict[str, Any]:
    """Each model's JSON schema under its name, with the models it uses ($defs) beside it."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        schema = model.model_json_schema(ref_template=REF + "{model}", mode=mode)
        for def_name, definition in schema.pop("$defs", {}).items():
            if def_name in out and out[def_name] != definition:
                raise RuntimeError(f"two models define {def_name} differently")
            out[def_name] = definition
        out[name] = schema
    return out


def _request_schemas() -> dict[str, Any]:
    """The request models' JSON schemas, with what their validators accept beyond their annotations."""
    out = _lift(REQUEST_MODELS, mode="validation")
    # Before-validators accept more than the annotations say; document what the wire takes (`stop`'s string form
    # comes from its validator's json_schema_input_type).
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        stop = out[name]["properties"]["stop"]
        stop["description"] = "one stop string or a list of them, at most --max-stop-sequences"
    logprobs = out["CompletionRequest"]["properties"]["logprobs"]
    logprobs["anyOf"].insert(0, {"type": "boolean"})
    logprobs["description"] = "how many alternatives to return per token (0..5); `true` means 0, `false` none"
    prompt = out["CompletionRequest"]["properties"]["prompt"]
    one, many = prompt["anyOf"]
    one["minLength"] = many["items"]["minLength"] = many["minItems"] = 1
    prompt["description"] = "one prompt, or a list of at most --max-client-batch-size prompts (one choice each)"
    # Checked by a validator of ChatMessage: a message has content, or tool calls.
    out["ChatMessage"]["anyOf"] = [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
    ]
    for name, fields in RANGES.items():
        for field, constraints in fields.items():
            _constrain(out[name]["properties"][field], constraints)
    return out


def _response_schemas() -> dict[str, Any]:
    """The response models' JSON schemas (as serialized: omitted fields are not required) with their $defs
    lifted into components/schemas."""
    return _lift(RESPONSE_MODELS, mode="serialization")


def component_schemas() -> dict[str, Any]:
    """Every request and response schema by name, with the models they use."""
    requests, responses = _request_schemas(), _response_schemas()
    clashes = sorted(name for name in requests.keys() & responses.keys() if requests[name] != responses[name])
    if clashes:
        raise RuntimeError(f"request and response models define {clashes} differently")
    return {**requests, **responses}
