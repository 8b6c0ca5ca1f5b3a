"""Shared pieces of the structured-output and tool-calling tests (issue 17): schemas, tools, validators.

The tiny model has random weights: only the grammar mask keeps its output valid, so every output is parsed
and validated here. Every string is bounded (maxLength, pattern or enum), every number has bounds and every
array a maxItems, so that a generation ends well within MAX_TOKENS whatever the weights pick; a request
with one of these schemas that ends with "length" is a failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

from tests.e2e.server import LaunchedServer, launch

# Room for every bounded schema below (the longest take ~200 tokens of the tiny vocabulary).
MAX_TOKENS = 256
# With parallel tool calls the number of calls is the model's choice (random weights: each call is followed
# by another one about half the time), so requests that allow several calls get more room.
TOOLS_MAX_TOKENS = 1024

# The client modules' server (tests/e2e/clients/conftest.py) with room for the tool definitions that the
# server puts in the prompt (~1,500 tokens of the tiny vocabulary for TOOLS).
SERVER_FLAGS = ("--max-concurrent-requests", "2", "--max-input-tokens", "4096", "--max-total-tokens", "8192")


def structured_server(model: Path) -> Iterator[LaunchedServer]:
    """For a module-scoped `server` fixture."""
    s = launch(model, *SERVER_FLAGS)
    yield s
    assert s.stop() == 0, s.log()

SEED = 17
TEMPERATURE = 0.7

# ---- JSON schemas -------------------------------------------------------------------------------
# Objects, arrays (minItems/maxItems), enums, nested $ref/$defs, anyOf, numbers with bounds, string
# patterns: everything the issue lists, in one schema.
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,5}$"},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"enum": ["admin", "user", "guest"]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3},
        "home": {"$ref": "#/$defs/address"},
        "contact": {"anyOf": [{"$ref": "#/$defs/email"}, {"type": "integer", "minimum": 100, "maximum": 999}]},
        "score": {"type": "number", "minimum": -5, "maximum": 5, "multipleOf": 0.25},
    },
    "required": ["name", "age", "role", "code", "tags", "home", "contact", "score"],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo"]},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "geo": {"$ref": "#/$defs/point"},
            },
            "required": ["city", "zip", "geo"],
            "additionalProperties": False,
        },
        "point": {
            "type": "array",
            "items": {"type": "integer", "minimum": -90, "maximum": 90},
            "minItems": 2,
            "maxItems": 2,
        },
        "email": {"type": "string", "pattern": "^[a-z]{1,4}@[a-z]{1,3}\\.com$"},
    },
}

# A top-level array of small objects, with an enum and a const.
ITEMS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "kind": {"const": "item"},
            "size": {"enum": ["S", "M", "L", 1, 2, None]},
            "n": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["kind", "size", "n"],
        "additionalProperties": False,
    },
    "minItems": 2,
    "maxItems": 4,
}

# A small one for quick checks.
POINT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "x": {"type": "integer", "minimum": -10, "maximum": 10},
        "y": {"type": "integer", "minimum": -10, "maximum": 10},
        "label": {"type": "string", "pattern": "^[a-z]{1,5}$"},
    },
    "required": ["x", "y", "label"],
    "additionalProperties": False,
}

# Regular expressions: the whole output must match (re.fullmatch).
REGEXES: list[str] = [
    r"(yes|no|maybe)",
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    r"\+?[0-9]{2,3} [A-Z][a-z]{0,4}( [a-z]{1,3}){0,2}",
]

# ---- tools --------------------------------------------------------------------------------------
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -100, "maximum": 100},
                "b": {"type": "integer", "minimum": -100, "maximum": 100},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
# Nested object, anyOf, patterns, a bounded array.
EVENT = {
    "type": "function",
    "function": {
        "name": "create_event",
        "description": "Put an event in the calendar",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "pattern": "^[A-Z][a-z]{1,5}$"},
                "when": {
                    "type": "object",
                    "properties": {
                        "day": {"type": "string", "pattern": "^2026-(0[1-9]|1[0-2])-[0-2][0-9]$"},
                        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                    },
                    "required": ["day", "hour"],
                    "additionalProperties": False,
                },
                "room": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 20},
                                   {"type": "string", "enum": ["lobby", "roof"]}]},
                "people": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z][a-z]{1,4}$"},
                           "minItems": 1, "maxItems": 3},
            },
            "required": ["title", "when", "room", "people"],
            "additionalProperties": False,
        },
    },
}
# Parameters with their own $defs, used through $ref ("#/$defs/..." is relative to the parameters schema,
# wherever the server puts it in its grammar).
BOOK = {
    "type": "function",
    "function": {
        "name": "book_meeting",
        "description": "Book a meeting",
        "parameters": {
            "type": "object",
            "properties": {
                "day": {"$ref": "#/$defs/date"},
                "slot": {"$ref": "#/$defs/slot"},
            },
            "required": ["day", "slot"],
            "additionalProperties": False,
            "$defs": {
                "date": {"type": "string", "pattern": "^2026-(0[1-9]|1[0-2])-[0-2][0-9]$"},
                "slot": {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 8, "maximum": 17},
                                                           "room": {"enum": ["lobby", "roof"]}},
                         "required": ["hour", "room"], "additionalProperties": False},
            },
        },
    },
}
TOOLS = [WEATHER, ADD, EVENT]
TOOL_MESSAGES = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]
JSON_MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


def parameters_of(tools: list[dict], name: str) -> dict:
    found = [t["function"]["parameters"] for t in tools if t["function"]["name"] == name]
    assert len(found) == 1, (name, [t["function"]["name"] for t in tools])
    return found[0]


# ---- validation ---------------------------------------------------------------------------------
def assert_fixed_layout(text: str) -> None:
    """No free whitespace outside strings: at most the one space that a fixed separator puts after `,` or
    `:` (json.dumps' ", " / ": "), and the same separators throughout. (Free whitespace would let random
    weights pad a value until max_tokens.)"""
    in_string = escaped = False
    separators: set[str] = set()
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in ",:":
            separators.add(char + (" " if text[i + 1:i + 2] == " " else ""))
        elif char in " \t\r\n":
            assert char == " " and i > 0 and text[i - 1] in ",:" and text[i + 1:i + 2] not in (" ", ""), \
                f"free whitespace outside a string at {i}: {text!r}"
    assert len({s for s in separators if s[0] == ","}) <= 1 and len({s for s in separators if s[0] == ":"}) <= 1, \
        f"mixed separators {sorted(separators)}: {text!r}"


def validate_json(text: str, schema: dict) -> Any:
    """The text is one JSON value, in a fixed layout, that the schema accepts; returns it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AssertionError(f"not JSON ({e}): {text!r}") from None
    try:
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as e:
        raise AssertionError(f"{text!r} does not validate: {e.message}") from None
    assert_fixed_layout(text)
    return value


def validate_regex(text: str, regex: str) -> None:
    assert re.fullmatch(regex, text), (regex, text)


def validate_arguments(tools: list[dict], name: str, arguments: Any) -> dict:
    """A tool call's `arguments`: a JSON string (never an object: TGI #2136) of an object that the
    named tool's parameters accept."""
    assert isinstance(arguments, str), f"arguments must be a JSON string, not {type(arguments)}: {arguments!r}"
    value = validate_json(arguments, parameters_of(tools, name))
    assert isinstance(value, dict), arguments
    return value


def check_tool_calls(tools: list[dict], calls: list[dict], *, parallel: bool = True,
                     names: set[str] | None = None) -> None:
    """`calls` as plain dicts ({"id", "type", "function": {"name", "arguments"}}): at least one, each with a
    distinct non-empty id, each naming one of `tools` (one of `names` when given) with valid arguments;
    exactly one when parallel tool calls are off."""
    assert calls, "no tool calls"
    if not parallel:
        assert len(calls) == 1, calls
    ids = [c["id"] for c in calls]
    assert all(isinstance(i, str) and i for i in ids), calls
    assert len(set(ids)) == len(ids), f"tool call ids repeat: {ids}"
    for call in calls:
        assert call["type"] == "function", call
        name = call["function"]["name"]
        assert name in (names or {t["function"]["name"] for t in tools}), call
        validate_arguments(tools, name, call["function"]["arguments"])


def as_dict(obj: Any) -> Any:
    """A client's response object (pydantic, dataclass or dict) as plain JSON-like data."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_dict(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return {k: as_dict(getattr(obj, k)) for k in obj.__dataclass_fields__}
    return obj


def call_dicts(tool_calls: list | None) -> list[dict]:
    """tool_calls of a non-streamed message (any client's objects) as plain dicts."""
    return [{"id": c["id"], "type": c["type"],
             "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
            for c in as_dict(tool_calls or [])]


def accumulate_tool_calls(deltas: list[list[dict]]) -> list[dict]:
    """Rebuild the calls from the streamed `delta.tool_calls` lists (plain dicts), the way the openai SDK and
    huggingface_hub users do, by `index`, and check the shape of the stream: a call's first delta carries
    its id, type, name and `arguments: ""`; the later ones carry an `arguments` fragment only; indexes are
    0, 1, ... in order of appearance."""
    calls: dict[int, dict] = {}
    for tool_calls in deltas:
        for delta in tool_calls:
            index = delta["index"]
            function = delta.get("function") or {}
            if index not in calls:
                assert index == len(calls), f"index {index} after {sorted(calls)}"
                assert delta.get("id"), delta
                assert delta.get("type") == "function", delta
                assert function.get("name"), delta
                assert function.get("arguments") == "", delta
                calls[index] = {"id": delta["id"], "type": "function",
                                "function": {"name": function["name"], "arguments": ""}}
                continue
            assert not function.get("name"), f"name sent again: {delta}"
            assert isinstance(function.get("arguments"), str), delta
            calls[index]["function"]["arguments"] += function["arguments"]
    return [calls[i] for i in sorted(calls)]


def same_calls(a: list[dict], b: list[dict]) -> bool:
    """Equal names and arguments, in order (ids are not compared)."""
    return [(c["function"]["name"], c["function"]["arguments"]) for c in a] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in b]
