"""huggingface_hub's InferenceClient and AsyncInferenceClient, unmodified, against a real server.

What the installed client sends (huggingface_hub 1.x/2.x, provider "hf-inference" for a URL model):
- chat_completion / chat.completions.create -> POST {base_url}/v1/chat/completions, body with
  "model": "dummy" when the model is the URL; stream lines parsed by `data:` prefix, ends at `data: [DONE]`.
- text_generation -> POST {base_url} (the compat route `/`), body {"inputs", "parameters", "stream"};
  errors mapped by `error_type` (raise_text_generation_error), chat errors stay HfHubHTTPError.
"""

from __future__ import annotations

import asyncio

import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError, OverloadedError, ValidationError

from tests.e2e.clients.helpers import (
    HOLD_TOKENS,
    MESSAGES,
    PROMPT,
    assert_full,
    assert_stream_integrity,
    both_slots_held,
    check_chat,
    native_generate,
    over_long_prompt,
    render_chat,
    token_count,
    wait_admits,
)
from tests.e2e.server import LaunchedServer

MAX_TOKENS = 24


def test_chat_stream_equals_non_stream(server: LaunchedServer) -> None:
    with InferenceClient(base_url=server.url) as client:
        full = client.chat.completions.create(messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
        chunks = list(client.chat.completions.create(messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0,
                                                     stream=True))
    check_chat(server, full, chunks, MAX_TOKENS)


def test_chat_stream_include_usage(server: LaunchedServer) -> None:
    with InferenceClient(base_url=server.url) as client:
        chunks = list(client.chat_completion(MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    prompt_tokens = token_count(server, render_chat(MESSAGES))
    assert chunks[-1].usage.prompt_tokens == prompt_tokens
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS == len(chunks) - 1
    assert chunks[-1].usage.total_tokens == prompt_tokens + MAX_TOKENS


async def test_async_chat_stream_equals_non_stream(server: LaunchedServer) -> None:
    async with AsyncInferenceClient(base_url=server.url) as client:
        full = await client.chat.completions.create(messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
        chunks = [c async for c in await client.chat.completions.create(
            messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True)]
    check_chat(server, full, chunks, MAX_TOKENS)


def check_text_generation(server: LaunchedServer, full, events: list) -> None:
    reference = native_generate(server, PROMPT, MAX_TOKENS)
    assert full.generated_text == reference["generated_text"]
    assert full.details.generated_tokens == MAX_TOKENS
    assert full.details.finish_reason == "length"
    assert [t.text for t in full.details.tokens] == [t["text"] for t in reference["details"]["tokens"]]

    assert [e.index for e in events] == list(range(1, MAX_TOKENS + 1))
    assert [e.token.text for e in events] == [t.text for t in full.details.tokens]
    assert [e.token.id for e in events] == [t.id for t in full.details.tokens]
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == full.generated_text
    assert events[-1].details.generated_tokens == MAX_TOKENS
    assert events[-1].details.finish_reason == "length"
    assert_stream_integrity([e.token.text for e in events], full.generated_text)


def test_text_generation_stream_equals_non_stream(server: LaunchedServer) -> None:
    client = InferenceClient(model=server.url)
    full = client.text_generation(PROMPT, max_new_tokens=MAX_TOKENS, details=True)
    events = list(client.text_generation(PROMPT, max_new_tokens=MAX_TOKENS, stream=True, details=True))
    check_text_generation(server, full, events)
    # Without details the client returns the text, and streams every token's text (special ones too).
    assert client.text_generation(PROMPT, max_new_tokens=MAX_TOKENS) == full.generated_text
    assert list(client.text_generation(PROMPT, max_new_tokens=MAX_TOKENS, stream=True)) == [
        e.token.text for e in events]


async def test_async_text_generation_stream_equals_non_stream(server: LaunchedServer) -> None:
    async with AsyncInferenceClient(model=server.url) as client:
        full = await client.text_generation(PROMPT, max_new_tokens=MAX_TOKENS, details=True)
        events = [e async for e in await client.text_generation(PROMPT, max_new_tokens=MAX_TOKENS, stream=True,
                                                                  details=True)]
    check_text_generation(server, full, events)


# ---- errors -------------------------------------------------------------------------------------
def test_overloaded_surfaces_as_overloaded_error(server: LaunchedServer) -> None:
    with both_slots_held(server), InferenceClient(model=server.url) as client:
        with pytest.raises(OverloadedError, match="overloaded"):
            client.text_generation(PROMPT, max_new_tokens=4)
        with pytest.raises(OverloadedError, match="overloaded"):
            list(client.text_generation(PROMPT, max_new_tokens=4, stream=True))
        # chat_completion does not map error types: the 429 is an HfHubHTTPError.
        with pytest.raises(HfHubHTTPError) as info:
            client.chat_completion(MESSAGES, max_tokens=4)
        assert info.value.response.status_code == 429
        assert info.value.server_message == "Model is overloaded"
        with pytest.raises(HfHubHTTPError) as info:
            list(client.chat_completion(MESSAGES, max_tokens=4, stream=True))
        assert info.value.response.status_code == 429
        assert info.value.server_message == "Model is overloaded"


async def test_async_overloaded_surfaces_as_overloaded_error(server: LaunchedServer) -> None:
    with both_slots_held(server):
        async with AsyncInferenceClient(model=server.url) as client:
            with pytest.raises(OverloadedError, match="overloaded"):
                await client.text_generation(PROMPT, max_new_tokens=4)
            # Streaming: the async event hook reads an error body only when it has a Content-Length.
            with pytest.raises(OverloadedError, match="overloaded"):
                [e async for e in await client.text_generation(PROMPT, max_new_tokens=4, stream=True)]
            with pytest.raises(HfHubHTTPError) as info:
                await client.chat_completion(MESSAGES, max_tokens=4)
            assert info.value.response.status_code == 429


def test_validation_errors(server: LaunchedServer) -> None:
    long_prompt = over_long_prompt(server)
    with InferenceClient(model=server.url) as client:
        with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
            client.text_generation(PROMPT, max_new_tokens=0)
        with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
            list(client.text_generation(PROMPT, max_new_tokens=0, stream=True))
        with pytest.raises(ValidationError, match=f"`inputs` must have less than {256} tokens"):
            client.text_generation(long_prompt, max_new_tokens=4)
        with pytest.raises(HfHubHTTPError) as info:
            client.chat_completion(MESSAGES, max_tokens=0)
        assert info.value.response.status_code == 422
        assert "`max_new_tokens` must be strictly positive" in str(info.value)
        with pytest.raises(HfHubHTTPError) as info:
            list(client.chat_completion(MESSAGES, max_tokens=0, stream=True))
        assert info.value.response.status_code == 422
        assert "`max_new_tokens` must be strictly positive" in str(info.value)
        with pytest.raises(HfHubHTTPError) as info:
            client.chat_completion([{"role": "user", "content": long_prompt}], max_tokens=4)
        assert info.value.response.status_code == 422


async def test_async_validation_errors(server: LaunchedServer) -> None:
    async with AsyncInferenceClient(model=server.url) as client:
        with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
            await client.text_generation(PROMPT, max_new_tokens=0)
        with pytest.raises(ValidationError, match="`max_new_tokens` must be strictly positive"):
            [e async for e in await client.text_generation(PROMPT, max_new_tokens=0, stream=True)]


# ---- cancellation -------------------------------------------------------------------------------
def test_breaking_out_of_streams_frees_the_slots(server: LaunchedServer) -> None:
    for _ in range(2):
        client = InferenceClient(model=server.url)
        chat = client.chat_completion(MESSAGES, max_tokens=HOLD_TOKENS, temperature=0, stream=True)
        text = client.text_generation(PROMPT, max_new_tokens=HOLD_TOKENS, stream=True)
        for _chunk in chat:
            break
        for _token in text:
            break
        assert_full(server)
        client.close()  # closes the responses the client still holds open
        assert wait_admits(server) == [200, 200]


async def test_async_breaking_out_of_streams_frees_the_slots(server: LaunchedServer) -> None:
    client = AsyncInferenceClient(model=server.url)
    chat = await client.chat_completion(MESSAGES, max_tokens=HOLD_TOKENS, temperature=0, stream=True)
    text = await client.text_generation(PROMPT, max_new_tokens=HOLD_TOKENS, stream=True)
    async for _chunk in chat:
        break
    async for _token in text:
        break
    await asyncio.to_thread(assert_full, server)
    await client.close()
    assert await asyncio.to_thread(wait_admits, server) == [200, 200]
