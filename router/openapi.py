"""OpenAPI 3.1 description of every HTTP route the router serves, and the routes that publish it.

`build_openapi` assembles the document: request bodies come from the pydantic models that parse them
(`model_json_schema()`, so the document cannot drift from what the server accepts), responses are
described by hand from CONTRACT.md and `router.responses`. `add_openapi_routes` serves it as
`GET /openapi.json` and renders it at `GET /docs` with Swagger UI, whose static files come from the
`swagger-ui-bundle-v2` package (imported as `swagger_ui_bundle`), so the page works offline. Without that
package `/docs` falls back to a plain HTML list of the routes.
"""

from __future__ import annotations

import copy
import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from router.middleware import OPEN_PATHS
from router.openai_schemas import ChatCompletionRequest, CompletionRequest
from router.schemas import GenerateRequest, TokenizeRequest

REF = "#/components/schemas/"
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "GenerateRequest": GenerateRequest,
    "TokenizeRequest": TokenizeRequest,
    "ChatCompletionRequest": ChatCompletionRequest,
    "CompletionRequest": CompletionRequest,
}
# Static files of Swagger UI that /docs needs, with their types; nothing else in the package is served.
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
               "favicon-32x32.png": "image/png", "favicon-16x16.png": "image/png"}

# ---- schemas ---------------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Any], required: Iterable[str] = (), description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": list(required)}
    if description:
        out["description"] = description
    return out


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}


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
        "grammar": {"description": "not supported by this server yet: refused unless null"},
        "adapter_id": {"description": "not supported by this server yet (no LoRA adapters)"},
        "stop": {"description": "at most --max-stop-sequences strings"},
    },
    "GenerateRequest": {"inputs": {"minLength": 1}},
    "ChatCompletionRequest": {
        **_OPENAI_RANGES,
        "max_completion_tokens": {"minimum": 1, "description": "OpenAI's newer name for max_tokens; wins over it"},
        "messages": {"minItems": 1},
        "logit_bias": {"description": "not supported by this server yet: refused unless empty"},
        "response_format": {"description": "constrained output is not supported by this server yet: any `type` "
                                           "but `text` is refused"},
    },
    "CompletionRequest": {
        **_OPENAI_RANGES,
        "repetition_penalty": {"exclusiveMinimum": 0},
        "logit_bias": {"description": "not supported by this server yet: refused unless empty"},
        "suffix": {"description": "not supported: refused unless null"},
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


def _request_schemas() -> dict[str, Any]:
    """The request models' JSON schemas with their $defs lifted into components/schemas."""
    out: dict[str, Any] = {}
    for name, model in REQUEST_MODELS.items():
        schema = model.model_json_schema(ref_template=REF + "{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            if def_name in out and out[def_name] != definition:
                raise RuntimeError(f"two request models define {def_name} differently")
            out[def_name] = definition
        out[name] = schema
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


FINISH_REASON = {"type": "string", "enum": ["length", "eos_token", "stop_sequence"]}
OPENAI_FINISH_REASON = {"type": "string", "enum": ["length", "stop"]}

RESPONSE_SCHEMAS: dict[str, Any] = {
    "ErrorResponse": _obj(
        {"error": {**STRING, "description": "what went wrong, for people"},
         "error_type": {**STRING, "description": "a stable kind, for programs",
                        "examples": ["validation", "overloaded", "generation", "incomplete_generation",
                                     "template_error", "unauthorized", "unhealthy"]}},
        ["error", "error_type"], "Body of every error answered before the first byte"),
    "Token": _obj(
        {"id": INTEGER, "text": STRING, "logprob": _nullable(NUMBER), "special": BOOLEAN},
        ["id", "text", "logprob", "special"]),
    "PrefillToken": _obj({"id": INTEGER, "text": STRING, "logprob": _nullable(NUMBER)}, ["id", "text", "logprob"],
                         "A prompt token; the first one has no logprob"),
    "Details": _obj(
        {"finish_reason": FINISH_REASON, "generated_tokens": INTEGER, "seed": _nullable(INTEGER),
         "prefill": {"type": "array", "items": _ref("PrefillToken"),
                     "description": "prompt tokens, filled with decoder_input_details"},
         "tokens": {"type": "array", "items": _ref("Token")},
         "top_tokens": {"type": "array", "items": {"type": "array", "items": _ref("Token")},
                        "description": "only with top_n_tokens"}},
        ["finish_reason", "generated_tokens", "seed", "prefill", "tokens"]),
    "GenerateResponse": _obj(
        {"generated_text": STRING, "details": _ref("Details")}, ["generated_text"],
        "`details` only when the request asked for it"),
    "CompatGenerateResponse": {"type": "array", "items": _ref("GenerateResponse"), "minItems": 1, "maxItems": 1},
    "StreamDetails": _obj(
        {"finish_reason": FINISH_REASON, "generated_tokens": INTEGER, "seed": _nullable(INTEGER),
         "input_length": INTEGER},
        ["finish_reason", "generated_tokens", "seed", "input_length"]),
    "StreamResponse": _obj(
        {"index": {**INTEGER, "minimum": 1}, "token": _ref("Token"),
         "top_tokens": {"type": "array", "items": _ref("Token")},
         "generated_text": _nullable(STRING), "details": _nullable(_ref("StreamDetails"))},
        ["index", "token", "generated_text", "details"],
        "One `data:{json}` event per token; the last one carries generated_text (and details if asked)"),
    "SimpleToken": _obj(
        {"id": INTEGER, "text": STRING, "start": {**INTEGER, "description": "character offset"},
         "stop": {**INTEGER, "description": "character offset, exclusive"}},
        ["id", "text", "start", "stop"]),
    "TokenizeResponse": {"type": "array", "items": _ref("SimpleToken")},
    "Info": _obj(
        {"model_id": STRING, "model_sha": _nullable(STRING), "model_pipeline_tag": _nullable(STRING),
         "model_dtype": _nullable(STRING), "model_device_type": _nullable(STRING),
         "max_concurrent_requests": INTEGER, "max_best_of": INTEGER, "max_stop_sequences": INTEGER,
         "max_input_tokens": INTEGER, "max_total_tokens": INTEGER, "validation_workers": INTEGER,
         "max_client_batch_size": INTEGER, "router": STRING, "version": STRING, "sha": _nullable(STRING),
         "docker_label": _nullable(STRING), "max_batch_total_tokens": INTEGER,
         "max_batch_prefill_tokens": INTEGER, "waiting_served_ratio": NUMBER, "max_waiting_tokens": INTEGER,
         "max_batch_size": _nullable(INTEGER)},
        ["model_id", "model_sha", "model_pipeline_tag", "max_concurrent_requests", "max_best_of",
         "max_stop_sequences", "max_input_tokens", "max_total_tokens", "validation_workers",
         "max_client_batch_size", "router", "version", "sha", "docker_label"]),
    "Model": _obj({"id": STRING, "object": {"const": "model"}, "created": INTEGER, "owned_by": STRING},
                  ["id", "object", "created", "owned_by"]),
    "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
                      ["object", "data"]),
    "Liveness": _obj({"status": {"const": "alive"}}, ["status"]),
    "Usage": _obj({"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER},
                  ["prompt_tokens", "completion_tokens", "total_tokens"]),
    "ChatTokenLogprob": _obj(
        {"token": STRING, "logprob": _nullable(NUMBER), "bytes": {"type": "array", "items": INTEGER},
         "top_logprobs": {"type": "array", "items": _obj(
             {"token": STRING, "logprob": _nullable(NUMBER), "bytes": {"type": "array", "items": INTEGER}},
             ["token", "logprob"])}},
        ["token", "logprob"]),
    "ChatLogprobs": _obj({"content": {"type": "array", "items": _ref("ChatTokenLogprob")}}, ["content"]),
    "ChatCompletion": _obj(
        {"id": STRING, "object": {"const": "chat.completion"}, "created": INTEGER, "model": STRING,
         "system_fingerprint": STRING,
         "choices": {"type": "array", "items": _obj(
             {"index": INTEGER,
              "message": _obj({"role": {"const": "assistant"}, "content": STRING}, ["role", "content"]),
              "logprobs": _nullable(_ref("ChatLogprobs")), "finish_reason": OPENAI_FINISH_REASON},
             ["index", "message", "logprobs", "finish_reason"])},
         "usage": _ref("Usage")},
        ["id", "object", "created", "model", "choices", "usage"]),
    "ChatCompletionChunk": _obj(
        {"id": STRING, "object": {"const": "chat.completion.chunk"}, "created": INTEGER, "model": STRING,
         "system_fingerprint": STRING,
         "choices": {"type": "array", "items": _obj(
             {"index": INTEGER,
              "delta": _obj({"role": {"const": "assistant"}, "content": STRING}),
              "logprobs": _nullable(_ref("ChatLogprobs")), "finish_reason": _nullable(OPENAI_FINISH_REASON)},
             ["index", "delta", "finish_reason"])},
         "usage": _ref("Usage")},
        ["id", "object", "created", "model", "choices"],
        "One `data: {json}` event per token; with stream_options.include_usage a last chunk with no choices "
        "carries usage; the stream ends with `data: [DONE]`"),
    "CompletionLogprobs": _obj(
        {"tokens": {"type": "array", "items": STRING},
         "token_logprobs": {"type": "array", "items": _nullable(NUMBER)},
         "top_logprobs": {"type": "array", "items": {"type": "object", "additionalProperties": _nullable(NUMBER)}},
         "text_offset": {"type": "array", "items": INTEGER}},
        ["tokens", "token_logprobs", "top_logprobs", "text_offset"]),
    "Completion": _obj(
        {"id": STRING, "object": {"const": "text_completion"}, "created": INTEGER, "model": STRING,
         "system_fingerprint": STRING,
         "choices": {"type": "array", "items": _ref("CompletionChoice")},
         "usage": _ref("Usage")},
        ["id", "object", "created", "model", "choices"],
        "The whole answer, or (streaming) one event per token with usage-only last chunk if asked"),
    "CompletionChoice": _obj(
        {"index": INTEGER, "text": STRING, "logprobs": _nullable(_ref("CompletionLogprobs")),
         "finish_reason": _nullable(OPENAI_FINISH_REASON)},
        ["index", "text", "logprobs", "finish_reason"]),
}

# ---- responses -------------------------------------------------------------------------------------

ERROR_DESCRIPTIONS = {
    "401": "missing or wrong API key (`unauthorized`); only when the server runs with --api-key",
    "413": "the body is larger than --payload-limit",
    "422": "the request breaks a validation rule (`validation`) or the chat template failed (`template_error`)",
    "424": "the shard failed during generation (`generation`); a stream, open from its prefill on, reports "
           "it as an error event instead",
    "429": "--max-concurrent-requests reached (`overloaded`); retry after `Retry-After` seconds",
    "500": "the generation ended without a final token (`incomplete_generation`)",
    "503": "the server is shutting down (`unavailable`); retry after `Retry-After` seconds, elsewhere",
}
ERROR_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": STRING, "description": "`Bearer`"}},
    "429": {"Retry-After": {"schema": STRING, "description": "seconds to wait before retrying"}},
    "503": {"Retry-After": {"schema": STRING, "description": "seconds to wait before retrying"}},
}
TIMING_HEADERS = {
    name: {"schema": STRING, "description": description}
    for name, description in {
        "x-compute-type": "where the model runs", "x-compute-time": "seconds, validation to last token",
        "x-total-time": "milliseconds", "x-validation-time": "milliseconds", "x-queue-time": "milliseconds",
        "x-inference-time": "milliseconds", "x-time-per-token": "milliseconds",
        "x-prompt-tokens": "input tokens", "x-generated-tokens": "generated tokens",
    }.items()
}
ERROR_EXAMPLES = {
    "401": ("Unauthorized", "unauthorized"),
    "413": ("payload is larger than the limit of 2000000 bytes", "validation"),
    "422": ("`max_new_tokens` must be strictly positive", "validation"),
    "424": ("Request failed during generation: Server error: shard 0 failed", "generation"),
    "429": ("Model is overloaded", "overloaded"),
    "500": ("Request failed during generation: the stream ended without a final token", "incomplete_generation"),
    "503": ("The server is shutting down", "unavailable"),
}
GENERATING_ERRORS = ("401", "413", "422", "424", "429", "500", "503")


def _errors(*codes: str) -> dict[str, Any]:
    out = {}
    for code in codes:
        message, kind = ERROR_EXAMPLES[code]
        response: dict[str, Any] = {"description": ERROR_DESCRIPTIONS[code], "content": {"application/json": {
            "schema": _ref("ErrorResponse"), "example": {"error": message, "error_type": kind}}}}
        if code in ERROR_HEADERS:
            response["headers"] = ERROR_HEADERS[code]
        out[code] = response
    return out


def _json(schema_name: str, description: str, headers: dict | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": _ref(schema_name)}}}
    if headers:
        out["headers"] = headers
    return out


def _sse(event_schema: str, description: str, example: str, done: bool) -> dict[str, Any]:
    """A text/event-stream body. Before OpenAPI 3.2's `itemSchema`, `schema` describes one event (the
    convention schemathesis and others read): its `data` is JSON of `event_schema`, or of an ErrorResponse
    when generation failed after the stream started, or (`done`) the literal `[DONE]` that ends the stream."""
    payload: dict[str, Any] = {"type": "string", "contentMediaType": "application/json",
                               "contentSchema": {"anyOf": [_ref(event_schema), _ref("ErrorResponse")]}}
    data = {"anyOf": [{"const": "[DONE]"}, payload]} if done else payload
    return {"schema": {
        "type": "object", "description": f"{description}\n\nOn the wire:\n\n```\n{example}```",
        "required": ["data"], "properties": {"data": data, "event": STRING, "id": STRING, "retry": INTEGER},
    }}


NATIVE_SSE = _sse(
    "StreamResponse",
    "Server-sent events: `data:{StreamResponse json}` then a blank line, one per token (no space after the "
    "colon, no `[DONE]`); an error after the stream started is one `data:{ErrorResponse json}` event; "
    "`: ping` comments keep an idle stream alive.",
    'data:{"index":1,"token":{"id":42,"text":" Hello","logprob":-0.3,"special":false},'
    '"generated_text":null,"details":null}\n\n'
    'data:{"index":2,"token":{"id":7,"text":"!","logprob":-0.1,"special":false},'
    '"generated_text":" Hello!","details":null}\n\n',
    done=False,
)
CHAT_SSE = _sse(
    "ChatCompletionChunk",
    "Server-sent events: `data: {ChatCompletionChunk json}` per token, then `data: [DONE]`; an error after "
    "the stream started is one `data: {ErrorResponse json}` event.",
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":0,"model":"m",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"logprobs":null,"finish_reason":null}]}'
    "\n\ndata: [DONE]\n\n",
    done=True,
)
COMPLETION_SSE = _sse(
    "Completion",
    "Server-sent events: `data: {Completion json}` per token (one choice each), then `data: [DONE]`; an error "
    "after the stream started is one `data: {ErrorResponse json}` event.",
    'data: {"id":"cmpl-1","object":"text_completion","created":0,"model":"m",'
    '"choices":[{"index":0,"text":"Hi","logprobs":null,"finish_reason":null}]}\n\ndata: [DONE]\n\n',
    done=True,
)


REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "GenerateRequest": {"inputs": "What is Deep Learning?", "parameters": {"max_new_tokens": 20}},
    "TokenizeRequest": {"inputs": "My name is Olivier and I"},
    "ChatCompletionRequest": {"model": "tgi", "messages": [{"role": "user", "content": "What is Deep Learning?"}],
                              "max_tokens": 20},
    "CompletionRequest": {"model": "tgi", "prompt": "What is Deep Learning?", "max_tokens": 20},
}


def _body(schema_name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {
        "schema": _ref(schema_name), "example": REQUEST_EXAMPLES[schema_name]}}}


def _operations() -> dict[str, dict[str, Any]]:
    return {
        "/generate": {"post": {
            "tags": ["Text Generation Inference"], "operationId": "generate",
            "summary": "Generate tokens",
            "requestBody": _body("GenerateRequest"),
            "responses": {"200": _json("GenerateResponse", "Generated text", TIMING_HEADERS),
                          **_errors(*GENERATING_ERRORS)},
        }},
        "/generate_stream": {"post": {
            "tags": ["Text Generation Inference"], "operationId": "generate_stream",
            "summary": "Generate a stream of tokens (server-sent events)",
            "requestBody": _body("GenerateRequest"),
            "responses": {"200": {"description": "Generated tokens, one event each",
                                  "content": {"text/event-stream": NATIVE_SSE}},
                          **_errors(*GENERATING_ERRORS)},
        }},
        "/": {"post": {
            "tags": ["Text Generation Inference"], "operationId": "compat_generate",
            "summary": "Generate tokens; `stream` in the body chooses JSON or server-sent events",
            "description": "huggingface_hub's `text_generation()` and the `text-generation` client call this "
                           "route. `stream: false` answers a JSON list with one /generate result, "
                           "`stream: true` answers like /generate_stream.",
            "requestBody": _body("GenerateRequest"),
            "responses": {"200": {"description": "Generated text (a one-element list), or a stream of tokens",
                                  "headers": TIMING_HEADERS,
                                  "content": {"application/json": {"schema": _ref("CompatGenerateResponse")},
                                              "text/event-stream": NATIVE_SSE}},
                          **_errors(*GENERATING_ERRORS)},
        }},
        "/tokenize": {"post": {
            "tags": ["Text Generation Inference"], "operationId": "tokenize",
            "summary": "Tokenize inputs",
            "requestBody": _body("TokenizeRequest"),
            "responses": {"200": _json("TokenizeResponse", "The tokens, with character offsets into `inputs`"),
                          **_errors("401", "413", "422")},
        }},
        "/v1/chat/completions": {"post": {
            "tags": ["OpenAI"], "operationId": "chat_completions",
            "summary": "OpenAI Chat Completions (the model's chat template renders `messages`)",
            "requestBody": _body("ChatCompletionRequest"),
            "responses": {"200": {"description": "A chat completion, or a stream of chunks",
                                  "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                              "text/event-stream": CHAT_SSE}},
                          **_errors(*GENERATING_ERRORS)},
        }},
        "/v1/completions": {"post": {
            "tags": ["OpenAI"], "operationId": "completions",
            "summary": "OpenAI legacy Completions",
            "requestBody": _body("CompletionRequest"),
            "responses": {"200": {"description": "A completion (one choice per prompt), or a stream of chunks",
                                  "content": {"application/json": {"schema": _ref("Completion")},
                                              "text/event-stream": COMPLETION_SSE}},
                          **_errors(*GENERATING_ERRORS)},
        }},
        "/v1/models": {"get": {
            "tags": ["OpenAI"], "operationId": "models", "summary": "The one model this server serves",
            "responses": {"200": _json("ModelList", "The model list"), **_errors("401")},
        }},
        "/info": {"get": {
            "tags": ["Text Generation Inference"], "operationId": "get_model_info",
            "summary": "Model and server limits",
            "responses": {"200": _json("Info", "Served model info"), **_errors("401")},
        }},
        "/health": {"get": {
            "tags": ["Text Generation Inference"], "operationId": "health",
            "summary": "Readiness: 200 when every shard answers and can generate",
            "responses": {"200": {"description": "Everything is working fine (empty body)"},
                          "503": {"description": "Starting, or a shard failed (`unhealthy`)",
                                  "content": {"application/json": {"schema": _ref("ErrorResponse")}}}},
        }},
        "/live": {"get": {
            "tags": ["Text Generation Inference"], "operationId": "live",
            "summary": "Liveness: 200 while the process and its scheduling loop make progress",
            "responses": {"200": _json("Liveness", "Alive"),
                          "503": {"description": "Hung or dead: the orchestrator should restart the server",
                                  "content": {"application/json": {"schema": _ref("ErrorResponse")}}}},
        }},
        "/metrics": {"get": {
            "tags": ["Text Generation Inference"], "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": STRING}}},
                          **_errors("401")},
        }},
        "/openapi.json": {"get": {
            "tags": ["Documentation"], "operationId": "openapi",
            "summary": "This OpenAPI document",
            "responses": {"200": {"description": "OpenAPI 3.1 document",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors("401")},
        }},
        "/docs": {"get": {
            "tags": ["Documentation"], "operationId": "docs",
            "summary": "Interactive documentation (Swagger UI, served offline)",
            "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": STRING}}},
                          **_errors("401")},
        }},
    }


def build_openapi(version: str, model_id: str, open_paths: Iterable[str] = OPEN_PATHS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route; `open_paths` answer without the API key (by default the
    api-key middleware's)."""
    open_paths = set(open_paths)
    paths = _operations()
    for path, item in paths.items():
        if path in open_paths:
            for operation in item.values():
                operation["security"] = []
    schemas = {**_request_schemas(), **RESPONSE_SCHEMAS}
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "tgi-py",
            "version": version,
            "description": f"Text generation server, wire-compatible with Hugging Face text-generation-inference "
                           f"(TGI), serving `{model_id}`. Errors answered before the first byte are JSON "
                           f"`{{\"error\", \"error_type\"}}` with a real HTTP status.",
            "license": {"name": "Apache 2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "Text Generation Inference", "description": "TGI's native API"},
            {"name": "OpenAI", "description": "OpenAI-compatible API"},
            {"name": "Documentation"},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"BearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <key>`, enforced only when the server runs with "
                               "--api-key; " + ", ".join(sorted(open_paths)) + " never need it",
            }},
        },
        "security": [{"BearerAuth": []}],
    }
    # A tree of its own: the module's constants are shared between operations, and callers may edit it.
    return copy.deepcopy(document)


# ---- serving ---------------------------------------------------------------------------------------


def _swagger_ui_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if all((path / name).is_file() for name in DOCS_ASSETS) else None


SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/static/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="docs/static/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<noscript>{routes}</noscript>
<script src="docs/static/swagger-ui-bundle.js" charset="utf-8"></script>
<script>
window.onload = function () {{
  window.ui = SwaggerUIBundle({{url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                               presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"}});
}};
</script>
</body>
</html>
"""

PLAIN_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}code{{font-weight:bold}}</style></head>
<body>
<h1>{title}</h1>
<p>The full description is the OpenAPI document at <a href="openapi.json">/openapi.json</a>.</p>
{routes}
</body>
</html>
"""


def _route_list(spec: dict[str, Any]) -> str:
    items = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            items.append(f"<li><code>{html.escape(method.upper())} {html.escape(path)}</code> "
                         f"{html.escape(operation.get('summary', ''))}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def docs_page(spec: dict[str, Any], swagger_ui: bool) -> str:
    """The /docs HTML: Swagger UI when its files are installed, else a plain list of the routes."""
    title = html.escape(f"{spec['info']['title']} {spec['info']['version']} API")
    return (SWAGGER_PAGE if swagger_ui else PLAIN_PAGE).format(title=title, routes=_route_list(spec))


def add_openapi_routes(app: web.Application, spec: dict[str, Any]) -> None:
    """GET /openapi.json, GET /docs and (when Swagger UI is installed) GET /docs/static/{name}."""
    document = json.dumps(spec, ensure_ascii=False).encode()
    assets = _swagger_ui_dir()
    page = docs_page(spec, swagger_ui=assets is not None)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    routes = [web.get("/openapi.json", openapi_json), web.get("/docs", docs)]
    if assets is not None:
        async def static(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            if name not in DOCS_ASSETS:  # an allow-list: nothing else of the package is reachable
                raise web.HTTPNotFound()
            return web.FileResponse(assets / name, headers={"Content-Type": DOCS_ASSETS[name],
                                                            "Cache-Control": "public, max-age=86400"})

        routes.append(web.get("/docs/static/{name}", static))
    app.add_routes(routes)
