"""The native routes end to end on a real tgi-launch: greedy ids, streaming, compat route, tokenize."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from tests.e2e.server import LaunchedServer
from tests.e2e.sse import stream

PROMPTS = ["Hello world", "The quick brown fox", "東京は日本の", "Emoji test: 🤗", "def add(a, b):"]


def reference_ids(model_dir: Path, prompt: str, max_new_tokens: int) -> list[int]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tokenizer.encode(prompt).ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_greedy_ids_equal_transformers_generate_in_one_batch(server: LaunchedServer, tiny_llama: Path) -> None:
    """Five prompts of different lengths, sent at once so they share batches, each equal to HF generate."""
    body = lambda p: {"inputs": p, "parameters": {"max_new_tokens": 24, "details": True}}  # noqa: E731
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        responses = list(pool.map(lambda p: server.post("/generate", body(p)), PROMPTS))
    for prompt, response in zip(PROMPTS, responses, strict=True):
        assert response.status_code == 200, response.text
        details = response.json()["details"]
        got = [t["id"] for t in details["tokens"]]
        assert got == reference_ids(tiny_llama, prompt, 24), prompt
        assert details["finish_reason"] == "length"
        assert details["generated_tokens"] == 24


def test_stream_sends_one_event_per_token_and_the_same_text_as_generate(server: LaunchedServer) -> None:
    body = {"inputs": "Emoji test: 🤗", "parameters": {"max_new_tokens": 30, "details": True}}
    events = stream(server.url + "/generate_stream", body)
    assert [e["index"] for e in events] == list(range(1, 31))
    assert all(e["generated_text"] is None for e in events[:-1])
    last = events[-1]
    assert last["details"]["finish_reason"] == "length"
    assert last["details"]["generated_tokens"] == 30
    streamed_text = "".join(e["token"]["text"] for e in events if not e["token"]["special"])
    assert streamed_text == last["generated_text"]
    generated = server.post("/generate", body).json()
    assert generated["generated_text"] == last["generated_text"]
    import re

    import requests

    metrics = requests.get(server.url + "/metrics", timeout=10).text
    written = float(re.search(r"^tgi_py_router_token_overhead_count (\S+)$", metrics, re.M).group(1))
    assert written >= 30  # every streamed token's router overhead was measured
    assert [t["id"] for t in generated["details"]["tokens"]] == [e["token"]["id"] for e in events]


def test_streamed_text_never_contains_half_characters(server: LaunchedServer, tiny_llama: Path) -> None:
    """Whatever the random model emits, no event's text ends inside a UTF-8 sequence it later completes."""
    tokenizer = Tokenizer.from_file(str(tiny_llama / "tokenizer.json"))
    for prompt in PROMPTS:
        events = stream(server.url + "/generate_stream", {"inputs": prompt, "parameters": {"max_new_tokens": 40}})
        events = [e for e in events if not e["token"]["special"]]
        full = tokenizer.decode([e["token"]["id"] for e in events])
        assert "".join(e["token"]["text"] for e in events) == full
        # Text held back for an incomplete character arrives with a later token: an event carries
        # U+FFFD only where the fully decoded text has one at that point too.
        emitted = ""
        for event in events:
            emitted += event["token"]["text"]
            assert full.startswith(emitted)


def test_compat_route_answers_a_list_or_a_stream(server: LaunchedServer) -> None:
    params = {"max_new_tokens": 8}
    listed = server.post("/", {"inputs": "Hello world", "parameters": params})
    assert listed.status_code == 200
    assert isinstance(listed.json(), list) and len(listed.json()) == 1
    events = stream(server.url + "/", {"inputs": "Hello world", "parameters": params, "stream": True})
    assert events[-1]["generated_text"] == listed.json()[0]["generated_text"]


def test_sampling_with_a_seed_is_reproducible_and_reports_the_seed(server: LaunchedServer) -> None:
    params = {"max_new_tokens": 16, "do_sample": True, "temperature": 0.9, "top_k": 50, "seed": 42,
              "details": True}
    first = server.post("/generate", {"inputs": "Hello world", "parameters": params}).json()
    second = server.post("/generate", {"inputs": "Hello world", "parameters": params}).json()
    assert first["generated_text"] == second["generated_text"]
    assert first["details"]["seed"] == 42
    unseeded = server.post("/generate", {"inputs": "Hello world", "parameters": {**params, "seed": None}}).json()
    assert isinstance(unseeded["details"]["seed"], int)


def test_stop_sequence_ends_generation_and_never_reaches_the_client(server: LaunchedServer) -> None:
    free = server.post("/generate", {"inputs": "Hello world", "parameters": {"max_new_tokens": 20}}).json()
    text = free["generated_text"]
    stop = text[5:9]
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 20, "stop": [stop], "details": True}}
    stopped = server.post("/generate", body).json()
    assert stopped["details"]["finish_reason"] == "stop_sequence"
    # Ours: the stop string is cut from the output (as OpenAI does), on every route alike.
    assert stopped["generated_text"] == text[: text.index(stop)]
    events = stream(server.url + "/generate_stream", body)
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"
    streamed = ""
    for event in events:
        streamed += event["token"]["text"]
        assert stop not in streamed
    assert streamed == stopped["generated_text"] == events[-1]["generated_text"]


def test_return_full_text_decoder_details_and_top_tokens(server: LaunchedServer) -> None:
    response = server.post("/generate", {"inputs": "Hello world", "parameters": {
        "max_new_tokens": 4, "return_full_text": True, "details": True, "decoder_input_details": True,
        "top_n_tokens": 3}}).json()
    assert response["generated_text"].startswith("Hello world")
    prefill = response["details"]["prefill"]
    assert prefill[0]["logprob"] is None and all(isinstance(t["logprob"], float) for t in prefill[1:])
    assert "".join(t["text"] for t in prefill) == "Hello world"
    top = response["details"]["top_tokens"]
    assert len(top) == 4 and all(len(row) == 3 for row in top)
    for row, token in zip(top, response["details"]["tokens"], strict=True):
        assert row[0]["id"] == token["id"]  # greedy: the chosen token is the most likely one


def test_tokenize_info_and_health(server: LaunchedServer) -> None:
    tokens = server.post("/tokenize", {"inputs": "Hello 東京"}).json()
    assert "".join(t["text"] for t in tokens).replace(" ", "") .startswith("Hello")
    assert all({"id", "text", "start", "stop"} <= set(t) for t in tokens)
    import requests

    info = requests.get(server.url + "/info", timeout=10).json()
    for key in ("model_id", "max_concurrent_requests", "max_input_tokens", "max_total_tokens", "version"):
        assert key in info
    assert info["max_total_tokens"] == 2048
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("body,field", [
    ({"inputs": "", "parameters": {"max_new_tokens": 5}}, "inputs"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": -3}}, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 10**6}}, "max_new_tokens"),
    ({"inputs": "hi " * 400, "parameters": {"max_new_tokens": 5}}, "inputs"),
    ({"inputs": 5}, "inputs"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": "ten"}}, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"temperature": 0}}, "temperature"),
    ({"inputs": "hi", "parameters": {"top_p": 1.5}}, "top_p"),
    ({"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "stop"),
    ({"parameters": {}}, "inputs"),
])
def test_bad_input_gets_a_clear_422_and_the_server_keeps_serving(server: LaunchedServer, body: dict,
                                                                 field: str) -> None:
    for route in ("/generate", "/generate_stream", "/"):
        response = server.post(route, body)
        assert response.status_code == 422, (route, response.text)
        error = response.json()
        assert error["error_type"] == "validation"
        assert field in error["error"]
    assert server.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}}).status_code == 200


def test_non_json_and_oversized_bodies(server: LaunchedServer) -> None:
    import requests

    bad = requests.post(server.url + "/generate", data=b"{not json", timeout=10,
                        headers={"Content-Type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation"
    for route in ("/generate", "/v1/chat/completions", "/tokenize"):
        huge = requests.post(server.url + route, data=b"x" * 2_100_000, timeout=30,
                             headers={"Content-Type": "application/json"})
        assert huge.status_code == 413, route
        assert "error" in huge.json()
    assert server.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}}).status_code == 200
