"""Structured output and tool calls (issue 17) through the openai Python SDK, unmodified, against a real server.

The SDK's own helpers do the work a user relies on: `chat.completions.parse(response_format=<pydantic model>)`
sends `{"type": "json_schema", "json_schema": {"name", "schema" (strict form), "strict": true}}` and parses
`message.content` into the model (raising LengthFinishReasonError on "length"); `chat.completions.stream(...)`
accumulates `delta.tool_calls` by `index` and, for strict tools, json.loads their arguments. Random weights:
every output is valid only because of the grammar mask, so every one is validated (tests/e2e/clients/structured.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import openai
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from tests.e2e.clients.structured import (
    ADD,
    BOOK,
    EVENT,
    ITEMS,
    JSON_MESSAGES,
    MAX_TOKENS,
    PERSON,
    POINT,
    REGEXES,
    SEED,
    TEMPERATURE,
    TOOL_MESSAGES,
    TOOLS,
    TOOLS_MAX_TOKENS,
    WEATHER,
    accumulate_tool_calls,
    as_dict,
    call_dicts,
    check_tool_calls,
    same_calls,
    structured_server,
    validate_json,
    validate_regex,
)
from tests.e2e.server import LaunchedServer


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    """One server per module, with room for tool definitions in the prompt."""
    yield from structured_server(tiny_llama)


class Role(StrEnum):
    admin = "admin"
    user = "user"
    guest = "guest"


class Address(BaseModel):
    city: Literal["Paris", "Lima", "Oslo"]
    zip: str = Field(pattern=r"^[0-9]{5}$")
    geo: list[Annotated[int, Field(ge=-90, le=90)]] = Field(min_length=2, max_length=2)


class Person(BaseModel):
    """$defs + $ref (Address, Role), an enum, bounded integers, a pattern, a bounded array, an anyOf, a
    bounded number."""

    name: str = Field(pattern=r"^[A-Z][a-z]{1,5}$")
    age: int = Field(ge=18, le=99)
    role: Role
    tags: list[Annotated[str, Field(max_length=3)]] = Field(min_length=1, max_length=3)
    home: Address
    contact: Address | Annotated[int, Field(ge=100, le=999)]
    score: float = Field(ge=-5, le=5, multiple_of=0.25)


def strict(tool: dict) -> dict:
    """The SDK's stream()/parse() only accept `strict` function tools (and then json.loads their arguments)."""
    return {"type": "function", "function": {**tool["function"], "strict": True}}


STRICT_TOOLS = [strict(t) for t in TOOLS]


@pytest.fixture(scope="module")
def client(server: LaunchedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def params(**kwargs) -> dict:
    return {"model": "tgi", "messages": JSON_MESSAGES, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE,
            "seed": SEED, **kwargs}


def streamed_content(chunks: list) -> tuple[str, str | None]:
    """The content of a chat stream and the finish_reason of its last choice chunk."""
    with_choices = [c for c in chunks if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    return content, with_choices[-1].choices[0].finish_reason


def streamed_calls(chunks: list) -> tuple[list[dict], str | None]:
    """The tool calls of a chat stream rebuilt from the raw deltas (and the stream's shape checked)."""
    with_choices = [c for c in chunks if c.choices]
    deltas = [as_dict(c.choices[0].delta.tool_calls) for c in with_choices if c.choices[0].delta.tool_calls]
    assert all(not c.choices[0].delta.content for c in with_choices), "content in a tool-call stream"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    return accumulate_tool_calls(deltas), with_choices[-1].choices[0].finish_reason


# ---- response_format ----------------------------------------------------------------------------
def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(**params(response_format=Person))
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, Person), choice.message
    # What the SDK sent (strict form: additionalProperties false, every property required) is what came back.
    validate_json(choice.message.content, to_strict_json_schema(Person))
    assert completion.usage.completion_tokens < MAX_TOKENS

    # The SDK's stream helper: same seed, same text, parsed the same way.
    with client.chat.completions.stream(**params(response_format=Person)) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == choice.message.content
    assert final.choices[0].message.parsed == choice.message.parsed
    done = [e for e in events if e.type == "content.done"]
    assert len(done) == 1 and done[0].parsed == choice.message.parsed


FORMATS = {
    "openai-json_schema": ({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}, PERSON),
    "openai-json_schema-strict": (
        {"type": "json_schema", "json_schema": {"name": "point", "schema": POINT, "strict": True}}, POINT),
    "tgi-json": ({"type": "json", "value": ITEMS}, ITEMS),
    "tgi-json_object": ({"type": "json_object", "value": POINT}, POINT),
    "tgi-json_schema": ({"type": "json_schema", "value": {"name": "items", "schema": ITEMS}}, ITEMS),
    "tgi-regex": ({"type": "regex", "value": REGEXES[2]}, None),
}


@pytest.mark.parametrize("form", list(FORMATS))
def test_chat_response_format_stream_equals_non_stream(client: openai.OpenAI, form: str) -> None:
    response_format, schema = FORMATS[form]
    full = client.chat.completions.create(**params(response_format=response_format))
    content = full.choices[0].message.content
    assert full.choices[0].finish_reason == "stop", (content, full.choices[0].finish_reason)
    assert not full.choices[0].message.tool_calls
    if schema is None:
        validate_regex(content, response_format["value"])
    else:
        validate_json(content, schema)

    chunks = list(client.chat.completions.create(**params(response_format=response_format), stream=True))
    assert streamed_content(chunks) == (content, "stop")


def test_json_object_without_a_schema(client: openai.OpenAI) -> None:
    """OpenAI's {"type": "json_object"}: any JSON object (unbounded, so "length" is allowed; a finished one
    must parse)."""
    full = client.chat.completions.create(**params(response_format={"type": "json_object"}))
    content, finish = full.choices[0].message.content, full.choices[0].finish_reason
    assert finish in ("stop", "length"), finish
    assert content.startswith("{"), content
    if finish == "stop":
        assert isinstance(validate_json(content, {"type": "object"}), dict)
    chunks = list(client.chat.completions.create(**params(response_format={"type": "json_object"}), stream=True))
    assert streamed_content(chunks) == (content, finish)


@pytest.mark.parametrize("form", ["openai-json_schema", "tgi-json", "tgi-regex"])
def test_completions_response_format(client: openai.OpenAI, form: str) -> None:
    response_format, schema = FORMATS[form]
    request = {"model": "tgi", "prompt": "A JSON value:", "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE,
               "seed": SEED, "extra_body": {"response_format": response_format}}
    full = client.completions.create(**request)
    text = full.choices[0].text
    assert full.choices[0].finish_reason == "stop", (text, full.choices[0].finish_reason)
    if schema is None:
        validate_regex(text, response_format["value"])
    else:
        validate_json(text, schema)
    chunks = [c for c in client.completions.create(**request, stream=True) if c.choices]
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_running_out_of_tokens_mid_structure(client: openai.OpenAI) -> None:
    """max_tokens in the middle of the object: "length", and the text so far (a prefix of the finished one)."""
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    finished = client.chat.completions.create(**params(response_format=response_format))
    assert finished.choices[0].finish_reason == "stop"
    whole = finished.choices[0].message.content
    cut = client.chat.completions.create(**params(response_format=response_format, max_tokens=12))
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 12
    partial = cut.choices[0].message.content
    assert partial and whole.startswith(partial) and partial != whole, (partial, whole)
    with pytest.raises(json.JSONDecodeError):
        json.loads(partial)
    chunks = list(client.chat.completions.create(**params(response_format=response_format, max_tokens=12),
                                                 stream=True))
    assert streamed_content(chunks) == (partial, "length")
    # The SDK's parse() refuses a cut answer.
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(**params(response_format=Person, max_tokens=12))


# ---- tools --------------------------------------------------------------------------------------
def test_stream_with_tools_accumulated_by_the_sdk(client: openai.OpenAI) -> None:
    request = params(messages=TOOL_MESSAGES, tools=STRICT_TOOLS, tool_choice="required", max_tokens=TOOLS_MAX_TOKENS)
    full = client.chat.completions.create(**request)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice.message
    calls = call_dicts(choice.message.tool_calls)
    check_tool_calls(TOOLS, calls)

    # The SDK's stream helper accumulates the fragments by index and json.loads the arguments of strict tools.
    with client.chat.completions.stream(**request) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    accumulated = call_dicts(final.choices[0].message.tool_calls)
    check_tool_calls(TOOLS, accumulated)
    assert same_calls(accumulated, calls), (accumulated, calls)
    for call in final.choices[0].message.tool_calls:
        assert call.function.parsed_arguments == json.loads(call.function.arguments)
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [(e.index, e.name, e.arguments) for e in done] == [
        (i, c["function"]["name"], c["function"]["arguments"]) for i, c in enumerate(calls)]

    # The wire itself: one opening delta per call (id, type, name, arguments ""), then fragments, by index.
    raw, finish = streamed_calls(list(client.chat.completions.create(**request, stream=True)))
    assert finish == "tool_calls"
    assert same_calls(raw, calls)


def test_parallel_tool_calls(client: openai.OpenAI) -> None:
    """parallel_tool_calls (default true): one or more calls per turn, with distinct ids, and streamed with
    distinct indexes 0, 1, ...; parallel_tool_calls=false: exactly one. Whether the random model makes a
    second call is its choice (after a call it picks `]` over `,` about 3 times in 4), so seeds are tried
    until one gives several calls: there must be one among the first 64 (seed 18 with this server)."""
    several = None
    for seed in range(64):
        # strict tools: the SDK's stream helper below takes no others (and the tools are part of the prompt)
        request = params(messages=TOOL_MESSAGES, tools=STRICT_TOOLS, tool_choice="required", seed=seed,
                         max_tokens=TOOLS_MAX_TOKENS)
        full = client.chat.completions.create(**request)
        assert full.choices[0].finish_reason == "tool_calls", full.choices[0]
        calls = call_dicts(full.choices[0].message.tool_calls)
        check_tool_calls(TOOLS, calls)
        if seed < 2:
            single = client.chat.completions.create(**{**request, "max_tokens": MAX_TOKENS}, parallel_tool_calls=False)
            assert single.choices[0].finish_reason == "tool_calls", single.choices[0]
            check_tool_calls(TOOLS, call_dicts(single.choices[0].message.tool_calls), parallel=False)
        if len(calls) > 1:
            several = (seed, request, calls)
            break
    assert several is not None, "no seed in 0..63 gave more than one call per turn"
    seed, request, calls = several
    streamed, finish = streamed_calls(list(client.chat.completions.create(**request, stream=True)))
    assert finish == "tool_calls" and same_calls(streamed, calls), (seed, streamed, calls)
    # And through the SDK's accumulation.
    with client.chat.completions.stream(**request) as stream:
        final = stream.get_final_completion()
    assert same_calls(call_dicts(final.choices[0].message.tool_calls), calls)
    print(f"parallel tool calls: seed {seed} gave {len(calls)} calls")


@pytest.mark.parametrize("tool", [EVENT, ADD], ids=lambda t: t["function"]["name"])
def test_named_tool_choice(client: openai.OpenAI, tool: dict) -> None:
    name = tool["function"]["name"]
    request = params(messages=TOOL_MESSAGES, tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}})
    full = client.chat.completions.create(**request)
    assert full.choices[0].finish_reason == "tool_calls", full.choices[0]
    assert full.choices[0].message.content is None
    calls = call_dicts(full.choices[0].message.tool_calls)
    check_tool_calls(TOOLS, calls, names={name})
    streamed, finish = streamed_calls(list(client.chat.completions.create(**request, stream=True)))
    assert finish == "tool_calls" and same_calls(streamed, calls), (streamed, calls)


def test_tool_parameters_with_defs(client: openai.OpenAI) -> None:
    """A tool whose parameters use their own $defs through "#/$defs/..." refs: the refs are relative to the
    parameters schema, wherever the server puts it in its tool-call grammar."""
    tools = [WEATHER, BOOK]
    for tool_choice in ({"type": "function", "function": {"name": "book_meeting"}}, "required"):
        request = params(messages=TOOL_MESSAGES, tools=tools, tool_choice=tool_choice, max_tokens=TOOLS_MAX_TOKENS)
        full = client.chat.completions.create(**request)
        assert full.choices[0].finish_reason == "tool_calls", full.choices[0]
        calls = call_dicts(full.choices[0].message.tool_calls)
        check_tool_calls(tools, calls)
        streamed, finish = streamed_calls(list(client.chat.completions.create(**request, stream=True)))
        assert finish == "tool_calls" and same_calls(streamed, calls), (streamed, calls)


def test_tool_choice_none(client: openai.OpenAI) -> None:
    request = params(messages=TOOL_MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=16)
    full = client.chat.completions.create(**request)
    choice = full.choices[0]
    assert not choice.message.tool_calls
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length"), choice
    chunks = list(client.chat.completions.create(**request, stream=True))
    assert all(not c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert streamed_content(chunks) == (choice.message.content, choice.finish_reason)


def test_tool_choice_auto(client: openai.OpenAI) -> None:
    """auto (the default with tools): either tool calls, which must validate, or a plain answer. One call at
    most, so that a call always fits in max_tokens (a plain answer from random weights runs to it)."""
    seen = []
    for seed in range(3):
        request = params(messages=TOOL_MESSAGES, tools=TOOLS, seed=seed, parallel_tool_calls=False)
        choice = client.chat.completions.create(**request).choices[0]
        chunks = list(client.chat.completions.create(**request, stream=True))
        if choice.message.tool_calls:
            seen.append("tool_calls")
            assert choice.finish_reason == "tool_calls", choice
            assert choice.message.content is None
            calls = call_dicts(choice.message.tool_calls)
            check_tool_calls(TOOLS, calls)
            streamed, finish = streamed_calls(chunks)
            assert finish == "tool_calls" and same_calls(streamed, calls), (streamed, calls)
        else:
            seen.append("content")
            assert isinstance(choice.message.content, str), choice
            assert choice.finish_reason in ("stop", "length"), choice
            assert streamed_content(chunks) == (choice.message.content, choice.finish_reason)
    print("tool_choice=auto gave", seen)


def test_tool_results_in_the_history(client: openai.OpenAI) -> None:
    """The turn after a tool call: the assistant message with its tool_calls and the tool's results."""
    first = client.chat.completions.create(**params(messages=TOOL_MESSAGES, tools=TOOLS, tool_choice="required",
                                                    parallel_tool_calls=False))
    message = first.choices[0].message
    assert message.tool_calls, message
    # As the SDK's docs do it: the response's message object itself goes into the next request.
    history: list[Any] = [*TOOL_MESSAGES, message]
    for call in message.tool_calls:
        history.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": 5})})
    second = client.chat.completions.create(**params(messages=history, tools=TOOLS, tool_choice="none",
                                                     max_tokens=8))
    assert isinstance(second.choices[0].message.content, str)
    assert not second.choices[0].message.tool_calls


# ---- refusals -----------------------------------------------------------------------------------
BAD_REQUESTS = {
    "unknown named tool": ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                           "nope"),
    "response_format with tools": ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, None),
    "invalid schema": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "strin"}}}}, "strin"),
    "missing $ref": ({"response_format": {"type": "json", "value": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}, "missing"),
    "invalid regex": ({"response_format": {"type": "regex", "value": "(ab"}}, "unclosed group"),
    "unsupported keyword, strict": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "u", "strict": True, "schema": {"type": "array", "uniqueItems": True}}}}, "uniqueItems"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_refusals_are_unprocessable_entity(client: openai.OpenAI, case: str) -> None:
    extra, needle = BAD_REQUESTS[case]
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.chat.completions.create(**params(messages=TOOL_MESSAGES, **extra), stream=stream)
        assert info.value.status_code == 422
        body = info.value.response.json()
        assert body["error_type"] == "validation", body
        assert isinstance(body["error"], str) and body["error"], body
        if needle:
            assert needle in body["error"], body
