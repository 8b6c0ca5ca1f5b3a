"""`parameters.grammar` (issue 17) with curl on the native routes, every accepted form, and the 422s that a
bad grammar or tool request gets on every route (the body: TGI's `{"error", "error_type": "validation"}`).

Random weights: every output is validated (tests/e2e/clients/structured.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.clients.helpers import assert_stream_integrity, data_events
from tests.e2e.clients.structured import (
    ITEMS,
    MAX_TOKENS,
    PERSON,
    POINT,
    REGEXES,
    SEED,
    TEMPERATURE,
    TOOLS,
    WEATHER,
    structured_server,
    validate_json,
    validate_regex,
)
from tests.e2e.clients.test_curl import curl, host_port
from tests.e2e.server import LaunchedServer


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    """One server per module, with room for tool definitions in the prompt."""
    yield from structured_server(tiny_llama)


PROMPT = "What is Deep Learning?"


def curl_post(server: LaunchedServer, route: str, body: dict, *flags: str) -> tuple[int, bytes]:
    """curl -s [flags] -X POST -d <body>: (HTTP status, body bytes)."""
    out = curl("-s", *flags, f"{host_port(server)}{route}", "-X", "POST", "-d", json.dumps(body),
               "-H", "Content-Type: application/json", "-w", "\n%{http_code}")
    payload, _, status = out.rpartition(b"\n")
    return int(status), payload


GRAMMARS = {
    "json": ({"type": "json", "value": PERSON}, PERSON),
    "json_object": ({"type": "json_object", "value": ITEMS}, ITEMS),
    "json_schema": ({"type": "json_schema", "value": {"name": "point", "schema": POINT, "strict": True}}, POINT),
    "json-as-string": ({"type": "json", "value": json.dumps(POINT)}, POINT),
    "regex": ({"type": "regex", "value": REGEXES[1]}, None),
}


def validate(text: str, grammar: dict, schema: dict | None) -> None:
    if schema is None:
        validate_regex(text, grammar["value"])
    else:
        validate_json(text, schema)


@pytest.mark.parametrize("form", list(GRAMMARS))
def test_generate_and_generate_stream_with_grammar(server: LaunchedServer, form: str) -> None:
    grammar, schema = GRAMMARS[form]
    parameters = {"max_new_tokens": MAX_TOKENS, "grammar": grammar, "do_sample": True, "temperature": TEMPERATURE,
                  "seed": SEED, "details": True}
    status, raw = curl_post(server, "/generate", {"inputs": PROMPT, "parameters": parameters})
    assert status == 200, raw
    full = json.loads(raw)
    text = full["generated_text"]
    validate(text, grammar, schema)
    assert full["details"]["finish_reason"] == "eos_token", full["details"]
    assert full["details"]["generated_tokens"] < MAX_TOKENS

    raw = curl("-N", f"{host_port(server)}/generate_stream", "-X", "POST", "-d",
               json.dumps({"inputs": PROMPT, "parameters": parameters}), "-H", "Content-Type: application/json")
    events = [json.loads(p) for p in data_events(raw)]
    assert events[-1]["generated_text"] == text
    assert events[-1]["details"]["finish_reason"] == "eos_token"
    assert [e["token"]["id"] for e in events] == [t["id"] for t in full["details"]["tokens"]]
    assert_stream_integrity([e["token"]["text"] for e in events if not e["token"]["special"]], text)


def test_compat_route_with_grammar(server: LaunchedServer) -> None:
    """POST / (TGI's compat route): a JSON list when not streaming, SSE when `stream` is true."""
    grammar, schema = GRAMMARS["json_schema"]
    parameters = {"max_new_tokens": MAX_TOKENS, "grammar": grammar, "details": True}
    status, raw = curl_post(server, "/", {"inputs": PROMPT, "parameters": parameters, "stream": False})
    assert status == 200, raw
    [full] = json.loads(raw)
    validate(full["generated_text"], grammar, schema)
    raw = curl("-N", f"{host_port(server)}/", "-X", "POST", "-d",
               json.dumps({"inputs": PROMPT, "parameters": parameters, "stream": True}),
               "-H", "Content-Type: application/json")
    events = [json.loads(p) for p in data_events(raw)]
    assert events[-1]["generated_text"] == full["generated_text"]


def test_max_new_tokens_mid_structure(server: LaunchedServer) -> None:
    grammar = {"type": "json", "value": PERSON}
    status, raw = curl_post(server, "/generate", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": MAX_TOKENS, "grammar": grammar}})
    assert status == 200, raw
    whole = json.loads(raw)["generated_text"]
    status, raw = curl_post(server, "/generate", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": 9, "grammar": grammar, "details": True}})
    assert status == 200, raw
    cut = json.loads(raw)
    assert cut["details"]["finish_reason"] == "length", cut
    assert cut["details"]["generated_tokens"] == 9
    assert cut["generated_text"] and whole.startswith(cut["generated_text"]) and cut["generated_text"] != whole


# ---- 422s ---------------------------------------------------------------------------------------
BAD_GRAMMARS = {
    "invalid schema": ({"type": "json", "value": {"type": "strin"}}, "strin"),
    "unsatisfiable schema": ({"type": "json", "value": {"type": "integer", "minimum": 5, "maximum": 1}},
                             "minimum"),
    "missing $ref": ({"type": "json", "value": {"$ref": "#/$defs/nowhere"}}, "nowhere"),
    "invalid regex": ({"type": "regex", "value": "(ab"}, "unclosed group"),
    "invalid pattern in a schema": ({"type": "json", "value": {"type": "string", "pattern": "[z-a]"}}, "range"),
    "unsupported keyword, strict": ({"type": "json_schema", "value": {
        "name": "u", "schema": {"type": "array", "uniqueItems": True}, "strict": True}}, "uniqueItems"),
    "not a schema": ({"type": "json", "value": "{not json"}, None),
}


def assert_validation_error(status: int, raw: bytes, needle: str | None) -> None:
    assert status == 422, (status, raw)
    body = json.loads(raw)
    assert body["error_type"] == "validation", body
    assert isinstance(body["error"], str) and body["error"], body
    if needle:
        assert needle in body["error"], body


@pytest.mark.parametrize("case", list(BAD_GRAMMARS))
def test_bad_grammar_is_422_on_every_route(server: LaunchedServer, case: str) -> None:
    grammar, needle = BAD_GRAMMARS[case]
    native = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "grammar": grammar}}
    for route, body in (("/generate", native), ("/generate_stream", native), ("/", {**native, "stream": False}),
                        ("/", {**native, "stream": True})):
        assert_validation_error(*curl_post(server, route, body), needle)
    for stream in (False, True):
        chat = {"model": "tgi", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
                "response_format": grammar, "stream": stream}
        assert_validation_error(*curl_post(server, "/v1/chat/completions", chat), needle)
        completion = {"model": "tgi", "prompt": PROMPT, "max_tokens": 8, "response_format": grammar,
                      "stream": stream}
        assert_validation_error(*curl_post(server, "/v1/completions", completion), needle)


def test_unsupported_keyword_without_strict_is_accepted(server: LaunchedServer) -> None:
    """strict absent: keywords the engine does not implement are ignored, not refused."""
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3,
              "uniqueItems": True}
    status, raw = curl_post(server, "/generate", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": MAX_TOKENS, "grammar": {"type": "json_schema", "value": {"schema": schema}}}})
    assert status == 200, raw
    value = json.loads(json.loads(raw)["generated_text"])
    assert isinstance(value, list) and len(value) <= 3 and all(0 <= v <= 9 for v in value), value


BAD_TOOL_REQUESTS = {
    "named tool not in tools": ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                                "nope"),
    "response_format with tools": ({"tools": [WEATHER], "response_format": {"type": "json", "value": POINT}}, None),
    "invalid tool parameters": ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}}],
        "tool_choice": "required"}, "strin"),
}


@pytest.mark.parametrize("case", list(BAD_TOOL_REQUESTS))
def test_bad_tool_request_is_422(server: LaunchedServer, case: str) -> None:
    extra, needle = BAD_TOOL_REQUESTS[case]
    for stream in (False, True):
        body = {"model": "tgi", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
                "stream": stream, **extra}
        assert_validation_error(*curl_post(server, "/v1/chat/completions", body), needle)
