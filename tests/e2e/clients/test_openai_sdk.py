"""The openai Python SDK, unmodified, against a real server (base_url = server + "/v1").

The SDK sends POST /v1/chat/completions and /v1/completions with `Authorization: Bearer <api_key>`, parses
SSE with a real decoder (comments ignored, stops at `data: [DONE]`), and maps HTTP statuses to exception
classes (422 UnprocessableEntityError, 429 RateLimitError); max_retries=0 so a 429 is not retried.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.clients.helpers import (
    HOLD_TOKENS,
    MAX_INPUT_TOKENS,
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
from tests.model_factory import SPECIAL_TOKENS

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def client(server: LaunchedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def chat(client: openai.OpenAI, **kwargs):
    params = {"model": "tgi", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    return client.chat.completions.create(**params)


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].object == "model" and models[0].id


def test_chat_stream_equals_non_stream(server: LaunchedServer, client: openai.OpenAI) -> None:
    full = chat(client)
    chunks = list(chat(client, stream=True))
    check_chat(server, full, chunks, MAX_TOKENS)
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked


def test_stream_options_include_usage(server: LaunchedServer, client: openai.OpenAI) -> None:
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, usage_chunks
    last = chunks[-1]
    assert last is usage_chunks[0] and last.choices == []
    prompt_tokens = token_count(server, render_chat(MESSAGES))
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        prompt_tokens, MAX_TOKENS, prompt_tokens + MAX_TOKENS)
    content_chunks = chunks[:-1]
    assert len(content_chunks) == MAX_TOKENS
    assert content_chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content for c in content_chunks) == chat(client).choices[0].message.content


def check_logprobs(entries: list, content: str, expected_tokens: int) -> None:
    assert len(entries) == expected_tokens
    # The chosen tokens are the text as streamed: held-back bytes of an incomplete UTF-8 sequence make one
    # token's text "" and a later one's carry them (TGI does the same); together they are the content.
    # Special tokens (the random model emits some) have logprobs but no text in the content.
    texts = [e for e in entries if e.token not in SPECIAL_TOKENS]
    assert "".join(e.token for e in texts) == content
    # Each token's bytes are its vocabulary entry's (the bytes of a split character included, where its
    # text is ""): decoded together, as a client rebuilding the text from them would, they give the content.
    assert b"".join(bytes(e.bytes) for e in texts).decode("utf-8", errors="replace") == content
    for entry in entries:
        assert entry.logprob <= 0 and math.isfinite(entry.logprob)
        assert len(entry.top_logprobs) == 2
        first, second = entry.top_logprobs
        assert first.logprob >= second.logprob
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(first.logprob, abs=1e-4)
        if entry.token and "\ufffd" not in entry.token + first.token:
            assert entry.token == first.token


def test_logprobs_stream_and_non_stream(client: openai.OpenAI) -> None:
    full = chat(client, logprobs=True, top_logprobs=2)
    entries = full.choices[0].logprobs.content
    check_logprobs(entries, full.choices[0].message.content, MAX_TOKENS)

    chunks = list(chat(client, logprobs=True, top_logprobs=2, stream=True))
    streamed = [entry for c in chunks if c.choices and c.choices[0].logprobs
                for entry in c.choices[0].logprobs.content]
    check_logprobs(streamed, full.choices[0].message.content, MAX_TOKENS)
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == full.choices[0].message.content

    # Without logprobs there are none.
    assert chat(client).choices[0].logprobs is None


def test_completions_stream_equals_non_stream(server: LaunchedServer, client: openai.OpenAI) -> None:
    params = {"model": "tgi", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    full = client.completions.create(**params)
    assert full.object == "text_completion"
    text = full.choices[0].text
    assert text == native_generate(server, PROMPT, MAX_TOKENS)["generated_text"]
    assert full.choices[0].finish_reason == "length"
    prompt_tokens = token_count(server, PROMPT)
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == (
        prompt_tokens, MAX_TOKENS, prompt_tokens + MAX_TOKENS)

    chunks = list(client.completions.create(**params, stream=True))
    with_text = [c for c in chunks if c.choices]
    assert_stream_integrity([c.choices[0].text for c in with_text], text)
    assert len(with_text) == MAX_TOKENS
    assert with_text[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in with_text[:-1])


# ---- errors -------------------------------------------------------------------------------------
def test_overloaded_is_rate_limit_error(server: LaunchedServer, client: openai.OpenAI) -> None:
    with both_slots_held(server):
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as info:
                chat(client, stream=stream)
            assert info.value.status_code == 429
            # The SDK keeps body["error"] as `.body` (a string in TGI's error shape).
            assert info.value.body == "Model is overloaded"
            assert info.value.response.headers["Retry-After"]
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model="tgi", prompt=PROMPT, max_tokens=4, stream=stream)


def test_validation_is_unprocessable_entity(server: LaunchedServer, client: openai.OpenAI) -> None:
    long_prompt = over_long_prompt(server)
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as info:
            chat(client, max_tokens=0, stream=stream)
        assert info.value.body == "`max_new_tokens` must be strictly positive"
        with pytest.raises(openai.UnprocessableEntityError) as info:
            chat(client, messages=[{"role": "user", "content": long_prompt}], stream=stream)
        assert f"must have less than {MAX_INPUT_TOKENS} tokens" in info.value.body
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.completions.create(model="tgi", prompt=PROMPT, max_tokens=0, stream=stream)
        assert info.value.body == "`max_new_tokens` must be strictly positive"
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.completions.create(model="tgi", prompt=long_prompt, max_tokens=4, stream=stream)
        assert f"must have less than {MAX_INPUT_TOKENS} tokens" in info.value.body


# ---- cancellation -------------------------------------------------------------------------------
def test_closing_streams_frees_the_slots(server: LaunchedServer, client: openai.OpenAI) -> None:
    for _ in range(2):
        streams = [chat(client, max_tokens=HOLD_TOKENS, stream=True),
                   client.completions.create(model="tgi", prompt=PROMPT, max_tokens=HOLD_TOKENS, temperature=0,
                                             stream=True)]
        for s in streams:
            next(iter(s))
        assert_full(server)
        for s in streams:
            s.close()
        assert wait_admits(server) == [200, 200]
