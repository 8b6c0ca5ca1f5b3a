"""The embedded default model: `tgi-launch` with no --model-id serves SmolLM2-135M-Instruct."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from tests.e2e.server import LaunchedServer, launch
from tests.e2e.sse import stream

CHAT_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LaunchedServer, Path]]:
    cache = os.environ.get("TGI_PY_CACHE") or str(tmp_path_factory.mktemp("tgi-cache"))
    server = launch(None, "--max-input-tokens", "512", "--max-total-tokens", "1024",
                    env={"TGI_PY_CACHE": cache})
    converted = [p.parent for p in Path(cache).rglob("config.json")]
    assert len(converted) == 1, converted
    yield server, converted[0]
    assert server.stop() == 0, server.log()


def test_embedded_model_greedy_ids_equal_transformers(smollm2: tuple[LaunchedServer, Path]) -> None:
    server, model_dir = smollm2
    info = server.post("/generate", {"inputs": CHAT_PROMPT, "parameters": {"max_new_tokens": 40, "details": True}})
    assert info.status_code == 200, info.text
    details = info.json()["details"]
    got = [t["id"] for t in details["tokens"]]
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt_ids = tokenizer.encode(CHAT_PROMPT).ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=40, do_sample=False, eos_token_id=2,
                         pad_token_id=2)
    assert got == out[0, len(prompt_ids):].tolist()
    assert "Paris" in info.json()["generated_text"]
    if got[-1] == 2:
        assert details["finish_reason"] == "eos_token"
        assert details["tokens"][-1]["special"] is True


def test_embedded_model_streams_the_same_text(smollm2: tuple[LaunchedServer, Path]) -> None:
    server, _ = smollm2
    body = {"inputs": CHAT_PROMPT, "parameters": {"max_new_tokens": 40}}
    events = stream(server.url + "/generate_stream", body)
    assert len(events) > 1
    text = "".join(e["token"]["text"] for e in events if not e["token"]["special"])
    assert text == events[-1]["generated_text"]
    assert server.post("/generate", body).json()["generated_text"] == text


def test_ignore_eos_generates_exactly_max_new_tokens(smollm2: tuple[LaunchedServer, Path]) -> None:
    server, _ = smollm2
    short = server.post("/generate", {"inputs": CHAT_PROMPT, "parameters": {"max_new_tokens": 80, "details": True}})
    assert short.json()["details"]["finish_reason"] == "eos_token"  # SmolLM2 answers briefly, then EOS
    forced = server.post("/generate", {"inputs": CHAT_PROMPT, "parameters": {
        "max_new_tokens": 80, "details": True, "ignore_eos": True}}).json()
    assert forced["details"]["finish_reason"] == "length"
    assert forced["details"]["generated_tokens"] == 80
