"""OpenAPI 3.1 description of every HTTP route the router serves.

`build_openapi` assembles the document: the operations below (routes, statuses, headers, SSE framing) with
the request and response schemas of router.openapi_components, which come from the pydantic models that
parse the requests and build the responses, so the document cannot drift from what the server accepts and
writes. router.openapi_docs serves it as `GET /openapi.json` and `GET /docs`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from router.middleware import OPEN_PATHS
from router.openapi_components import REF, component_schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}


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
            "schemas": component_schemas(),
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
