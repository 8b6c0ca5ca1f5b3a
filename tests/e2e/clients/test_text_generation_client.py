"""The `text-generation` client (Client / AsyncClient, 0.7.0), unmodified, against a real server.

Both call POST {base_url} (the compat route `/`) with {"inputs", "parameters", "stream"}: non-streaming
expects a JSON list and takes element 0; streaming parses every `data:` line as JSON (a `[DONE]` would crash
it) and turns error payloads into exceptions by `error_type`.
"""

from __future__ import annotations

import pytest
from text_generation import AsyncClient, Client
from text_generation.errors import OverloadedError, ValidationError
from text_generation.types import FinishReason

from tests.e2e.clients.helpers import (
    MAX_INPUT_TOKENS,
    PROMPT,
    assert_stream_integrity,
    both_slots_held,
    native_generate,
    over_long_prompt,
    token_count,
)
from tests.e2e.server import LaunchedServer

MAX_TOKENS = 24
# The client calls pydantic v1's `.dict()`; its deprecation warning is the client's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


def check(server: LaunchedServer, full, events: list) -> None:
    reference = native_generate(server, PROMPT, MAX_TOKENS)
    assert full.generated_text == reference["generated_text"]
    assert full.details.finish_reason == FinishReason.Length
    assert full.details.generated_tokens == MAX_TOKENS
    assert [t.id for t in full.details.tokens] == [t["id"] for t in reference["details"]["tokens"]]
    # decoder_input_details: every prompt token, the first without a logprob.
    assert len(full.details.prefill) == token_count(server, PROMPT)
    assert full.details.prefill[0].logprob is None
    assert all(t.logprob is not None for t in full.details.prefill[1:])

    assert [e.token.id for e in events] == [t.id for t in full.details.tokens]
    assert [e.token.text for e in events] == [t.text for t in full.details.tokens]
    assert [e.token.logprob for e in events] == pytest.approx([t.logprob for t in full.details.tokens], abs=1e-4)
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == full.generated_text
    assert events[-1].details.finish_reason == FinishReason.Length
    assert events[-1].details.generated_tokens == MAX_TOKENS
    assert_stream_integrity([e.token.text for e in events if not e.token.special], full.generated_text)


def test_generate_equals_generate_stream(server: LaunchedServer) -> None:
    client = Client(server.url)
    full = client.generate(PROMPT, max_new_tokens=MAX_TOKENS, decoder_input_details=True)
    events = list(client.generate_stream(PROMPT, max_new_tokens=MAX_TOKENS))
    check(server, full, events)


async def test_async_generate_equals_generate_stream(server: LaunchedServer) -> None:
    client = AsyncClient(server.url)
    full = await client.generate(PROMPT, max_new_tokens=MAX_TOKENS, decoder_input_details=True)
    events = [e async for e in client.generate_stream(PROMPT, max_new_tokens=MAX_TOKENS)]
    check(server, full, events)


def test_overloaded_error(server: LaunchedServer) -> None:
    client = Client(server.url)
    with both_slots_held(server):
        with pytest.raises(OverloadedError, match="Model is overloaded"):
            client.generate(PROMPT, max_new_tokens=4)
        with pytest.raises(OverloadedError, match="Model is overloaded"):
            list(client.generate_stream(PROMPT, max_new_tokens=4))


async def test_async_overloaded_error(server: LaunchedServer) -> None:
    client = AsyncClient(server.url)
    with both_slots_held(server):
        with pytest.raises(OverloadedError, match="Model is overloaded"):
            await client.generate(PROMPT, max_new_tokens=4)
        with pytest.raises(OverloadedError, match="Model is overloaded"):
            [e async for e in client.generate_stream(PROMPT, max_new_tokens=4)]


async def test_validation_error(server: LaunchedServer) -> None:
    long_prompt = over_long_prompt(server)
    client, async_client = Client(server.url), AsyncClient(server.url)
    with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
        client.generate(PROMPT, max_new_tokens=0)
    with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
        list(client.generate_stream(PROMPT, max_new_tokens=0))
    with pytest.raises(ValidationError, match=f"`inputs` must have less than {MAX_INPUT_TOKENS} tokens"):
        client.generate(long_prompt, max_new_tokens=4)
    with pytest.raises(ValidationError, match=f"`inputs` must have less than {MAX_INPUT_TOKENS} tokens"):
        list(client.generate_stream(long_prompt, max_new_tokens=4))
    with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
        await async_client.generate(PROMPT, max_new_tokens=0)
    with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
        [e async for e in async_client.generate_stream(PROMPT, max_new_tokens=0)]
