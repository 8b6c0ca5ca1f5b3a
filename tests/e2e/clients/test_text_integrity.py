"""What every client's user sees of the text: stop strings that span several tokens never reach them,
and streamed pieces are always a faithful prefix of the final text (no stray U+FFFD from a character
split across tokens). One server, every client."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from huggingface_hub import InferenceClient
from text_generation import Client

from tests.e2e.clients.helpers import (
    MESSAGES,
    PROMPT,
    StopCase,
    assert_stopped_stream,
    assert_stream_integrity,
    native_generate,
    pick_stop,
    render_chat,
)
from tests.e2e.server import LaunchedServer

JS = Path(__file__).resolve().parent.parent / "js"
LONG = 120  # long enough for the random model to emit multi-byte characters and invalid byte sequences
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


@pytest.fixture(scope="module")
def oai(server: LaunchedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def chat_stop(server: LaunchedServer) -> StopCase:
    return pick_stop(server, render_chat(MESSAGES))


@pytest.fixture(scope="module")
def text_stop(server: LaunchedServer) -> StopCase:
    return pick_stop(server, PROMPT)


def node_chat(server: LaunchedServer, **args) -> dict:
    spec = {"url": server.url, "stream": True, "args": {"messages": MESSAGES, "temperature": 0, **args}}
    done = subprocess.run(["node", str(JS / "chat.mjs"), json.dumps(spec)], capture_output=True, text=True,
                          timeout=120, cwd=JS)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"], out
    return out


# ---- stop sequences -----------------------------------------------------------------------------
def test_openai_chat_stop(oai: openai.OpenAI, chat_stop: StopCase) -> None:
    params = {"model": "tgi", "messages": MESSAGES, "max_tokens": 40, "temperature": 0, "stop": chat_stop.stop}
    full = oai.chat.completions.create(**params)
    assert full.choices[0].finish_reason == "stop"
    assert full.choices[0].message.content == chat_stop.before
    assert full.usage.completion_tokens == chat_stop.tokens
    chunks = list(oai.chat.completions.create(**params, stream=True))
    assert_stopped_stream([c.choices[0].delta.content or "" for c in chunks if c.choices],
                          full.choices[0].message.content, chat_stop)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_completions_stop(oai: openai.OpenAI, text_stop: StopCase) -> None:
    params = {"model": "tgi", "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stop": [text_stop.stop]}
    full = oai.completions.create(**params)
    assert full.choices[0].finish_reason == "stop"
    assert full.choices[0].text == text_stop.before
    chunks = list(oai.completions.create(**params, stream=True))
    assert_stopped_stream([c.choices[0].text for c in chunks if c.choices], full.choices[0].text, text_stop)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_hf_hub_stop(server: LaunchedServer, chat_stop: StopCase, text_stop: StopCase) -> None:
    with InferenceClient(base_url=server.url) as client:
        chunks = list(client.chat_completion(MESSAGES, max_tokens=40, temperature=0, stop=[chat_stop.stop],
                                             stream=True))
        assert_stopped_stream([c.choices[0].delta.content or "" for c in chunks if c.choices], chat_stop.before,
                              chat_stop)
        events = list(client.text_generation(PROMPT, max_new_tokens=40, stop=[text_stop.stop], stream=True,
                                             details=True))
    assert_stopped_stream([e.token.text for e in events], events[-1].generated_text, text_stop)
    assert events[-1].details.finish_reason == "stop_sequence"
    assert events[-1].details.generated_tokens == text_stop.tokens


def test_text_generation_client_stop(server: LaunchedServer, text_stop: StopCase) -> None:
    client = Client(server.url)
    full = client.generate(PROMPT, max_new_tokens=40, stop_sequences=[text_stop.stop])
    assert full.details.finish_reason == "stop_sequence"
    events = list(client.generate_stream(PROMPT, max_new_tokens=40, stop_sequences=[text_stop.stop]))
    assert_stopped_stream([e.token.text for e in events if not e.token.special], full.generated_text, text_stop)
    assert events[-1].generated_text == full.generated_text


def test_js_chat_stop(server: LaunchedServer, chat_stop: StopCase) -> None:
    chunks = node_chat(server, max_tokens=40, stop=[chat_stop.stop])["chunks"]
    assert_stopped_stream([c["choices"][0]["delta"].get("content") or "" for c in chunks], chat_stop.before,
                          chat_stop)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ---- U+FFFD and multi-byte characters -----------------------------------------------------------
def test_reference_output_exercises_multibyte_text(server: LaunchedServer) -> None:
    """The checks below have teeth: the greedy output has multi-byte characters and held-back tokens."""
    reference = native_generate(server, PROMPT, LONG)
    text = reference["generated_text"]
    assert any(len(ch.encode()) > 1 and ch != "\ufffd" for ch in text), text
    assert any(t["text"] == "" and not t["special"] for t in reference["details"]["tokens"]), \
        "no token's text was held back"


def test_streamed_chunks_never_invent_replacement_characters(server: LaunchedServer, oai: openai.OpenAI) -> None:
    native = native_generate(server, PROMPT, LONG)["generated_text"]
    chat_reference = native_generate(server, render_chat(MESSAGES), LONG)["generated_text"]

    tg_events = list(Client(server.url).generate_stream(PROMPT, max_new_tokens=LONG))
    assert_stream_integrity([e.token.text for e in tg_events if not e.token.special], native)
    assert tg_events[-1].generated_text == native

    with InferenceClient(base_url=server.url) as client:
        # Without details the client yields every token's text, special ones too: filter those with details.
        events = list(client.text_generation(PROMPT, max_new_tokens=LONG, stream=True, details=True))
        assert_stream_integrity([e.token.text for e in events if not e.token.special], native)
        chunks = client.chat_completion(MESSAGES, max_tokens=LONG, temperature=0, stream=True)
        assert_stream_integrity([c.choices[0].delta.content for c in chunks if c.choices], chat_reference)

    chunks = oai.chat.completions.create(model="tgi", messages=MESSAGES, max_tokens=LONG, temperature=0, stream=True)
    assert_stream_integrity([c.choices[0].delta.content for c in chunks if c.choices], chat_reference)
    chunks = oai.completions.create(model="tgi", prompt=PROMPT, max_tokens=LONG, temperature=0, stream=True)
    assert_stream_integrity([c.choices[0].text for c in chunks if c.choices], native)

    js = node_chat(server, max_tokens=LONG)["chunks"]
    assert_stream_integrity([c["choices"][0]["delta"]["content"] for c in js], chat_reference)
