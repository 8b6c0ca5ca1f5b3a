"""Structured output and tool calls (issue 17) through huggingface_hub's InferenceClient and
AsyncInferenceClient, unmodified, against a real server.

chat_completion(response_format=..., tools=..., tool_choice=...) posts to {base_url}/v1/chat/completions
with the values as given; streamed `delta.tool_calls` come back as ChatCompletionStreamOutputDeltaToolCall
objects that the user accumulates by `index`. text_generation(grammar=...) posts to the compat route `/`.
Random weights: every output is validated (tests/e2e/clients/structured.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError, ValidationError
from huggingface_hub.inference._generated.types import (
    ChatCompletionInputFunctionName,
    ChatCompletionInputToolChoiceClass,
)

from tests.e2e.clients.helpers import assert_stream_integrity
from tests.e2e.clients.structured import (
    ADD,
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


FORMATS = {
    "openai-json_schema": ({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                   "strict": True}}, PERSON),
    "tgi-json": ({"type": "json", "value": ITEMS}, ITEMS),
    "tgi-regex": ({"type": "regex", "value": REGEXES[1]}, None),
}
NAMED = {"function": {"name": "create_event"}}  # huggingface_hub's ToolChoiceClass form: no `type`


def chat_args(**kwargs) -> dict:
    return {"messages": JSON_MESSAGES, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE, "seed": SEED, **kwargs}


def check_format(full, chunks: list, response_format: dict, schema: dict | None) -> None:
    content = full.choices[0].message.content
    assert full.choices[0].finish_reason == "stop", (content, full.choices[0].finish_reason)
    assert not full.choices[0].message.tool_calls
    if schema is None:
        validate_regex(content, response_format["value"])
    else:
        validate_json(content, schema)
    with_choices = [c for c in chunks if c.choices]
    assert_stream_integrity([c.choices[0].delta.content or "" for c in with_choices], content)
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])


def check_tools(full, chunks: list, names: set[str] | None = None) -> list[dict]:
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice.message
    calls = call_dicts(choice.message.tool_calls)
    check_tool_calls(TOOLS, calls, names=names)
    with_choices = [c for c in chunks if c.choices]
    deltas = [as_dict(c.choices[0].delta.tool_calls) for c in with_choices if c.choices[0].delta.tool_calls]
    streamed = accumulate_tool_calls(deltas)
    assert same_calls(streamed, calls), (streamed, calls)
    assert with_choices[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    return calls


@pytest.mark.parametrize("form", list(FORMATS))
def test_chat_response_format(server: LaunchedServer, form: str) -> None:
    response_format, schema = FORMATS[form]
    with InferenceClient(base_url=server.url) as client:
        full = client.chat_completion(**chat_args(response_format=response_format))
        chunks = list(client.chat_completion(**chat_args(response_format=response_format), stream=True))
    check_format(full, chunks, response_format, schema)


async def test_async_chat_response_format(server: LaunchedServer) -> None:
    response_format, schema = FORMATS["openai-json_schema"]
    async with AsyncInferenceClient(base_url=server.url) as client:
        full = await client.chat_completion(**chat_args(response_format=response_format))
        chunks = [c async for c in await client.chat_completion(**chat_args(response_format=response_format),
                                                                stream=True)]
    check_format(full, chunks, response_format, schema)


def test_chat_tools(server: LaunchedServer) -> None:
    with InferenceClient(base_url=server.url) as client:
        for tool_choice, names in (("required", None), (NAMED, {"create_event"})):
            args = chat_args(messages=TOOL_MESSAGES, tools=TOOLS, tool_choice=tool_choice, max_tokens=TOOLS_MAX_TOKENS)
            full = client.chat_completion(**args)
            chunks = list(client.chat_completion(**args, stream=True))
            check_tools(full, chunks, names)
        # The client's own typed tool_choice object serialises to the same request.
        typed = ChatCompletionInputToolChoiceClass(function=ChatCompletionInputFunctionName(name="add"))
        full = client.chat_completion(**chat_args(messages=TOOL_MESSAGES, tools=TOOLS, tool_choice=typed))
        assert full.choices[0].finish_reason == "tool_calls", full.choices[0]
        check_tool_calls(TOOLS, call_dicts(full.choices[0].message.tool_calls), names={ADD["function"]["name"]})


async def test_async_chat_tools(server: LaunchedServer) -> None:
    async with AsyncInferenceClient(base_url=server.url) as client:
        for tool_choice, names in (("required", None), (NAMED, {"create_event"})):
            args = chat_args(messages=TOOL_MESSAGES, tools=TOOLS, tool_choice=tool_choice, max_tokens=TOOLS_MAX_TOKENS)
            full = await client.chat_completion(**args)
            chunks = [c async for c in await client.chat_completion(**args, stream=True)]
            check_tools(full, chunks, names)
        # auto: a plain answer or calls; either way the stream says the same.
        # (one call at most, so that it fits in max_tokens; a plain answer runs to it)
        args = chat_args(messages=TOOL_MESSAGES, tools=[EVENT, ADD], extra_body={"parallel_tool_calls": False})
        full = await client.chat_completion(**args)
        chunks = [c async for c in await client.chat_completion(**args, stream=True)]
        if full.choices[0].message.tool_calls:
            check_tools(full, chunks)
        else:
            assert full.choices[0].finish_reason in ("stop", "length"), full.choices[0]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
                full.choices[0].message.content


def test_chat_refusals(server: LaunchedServer) -> None:
    with InferenceClient(base_url=server.url) as client:
        for args in (chat_args(tools=TOOLS, tool_choice={"function": {"name": "nope"}}),
                     chat_args(tools=TOOLS, response_format={"type": "json", "value": POINT}),
                     chat_args(response_format={"type": "regex", "value": "(ab"})):
            for stream in (False, True):
                with pytest.raises(HfHubHTTPError) as info:
                    result = client.chat_completion(**args, stream=stream)
                    if stream:
                        list(result)
                assert info.value.response.status_code == 422, args


# ---- text_generation(grammar=...) on the compat route ---------------------------------------------
GRAMMARS = [({"type": "json", "value": POINT}, POINT), ({"type": "regex", "value": REGEXES[2]}, None)]


def check_text_generation(full, events: list, grammar: dict, schema: dict | None) -> None:
    assert full.details.finish_reason == "eos_token", full.details
    assert full.details.generated_tokens < MAX_TOKENS
    if schema is None:
        validate_regex(full.generated_text, grammar["value"])
    else:
        validate_json(full.generated_text, schema)
    assert events[-1].generated_text == full.generated_text
    assert events[-1].details.finish_reason == "eos_token"
    assert [e.token.id for e in events] == [t.id for t in full.details.tokens]
    assert_stream_integrity([e.token.text for e in events if not e.token.special], full.generated_text)


def test_text_generation_grammar(server: LaunchedServer) -> None:
    client = InferenceClient(model=server.url)
    for grammar, schema in GRAMMARS:
        args = {"max_new_tokens": MAX_TOKENS, "grammar": grammar, "details": True, "do_sample": True,
                "temperature": TEMPERATURE, "seed": SEED}
        full = client.text_generation("A point:", **args)
        events = list(client.text_generation("A point:", **args, stream=True))
        check_text_generation(full, events, grammar, schema)
    with pytest.raises(ValidationError, match="unclosed group"):
        client.text_generation("A point:", max_new_tokens=8, grammar={"type": "regex", "value": "(ab"})


async def test_async_text_generation_grammar(server: LaunchedServer) -> None:
    async with AsyncInferenceClient(model=server.url) as client:
        for grammar, schema in GRAMMARS:
            args = {"max_new_tokens": MAX_TOKENS, "grammar": grammar, "details": True}  # greedy
            full = await client.text_generation("A point:", **args)
            events = [e async for e in await client.text_generation("A point:", **args, stream=True)]
            check_text_generation(full, events, grammar, schema)
