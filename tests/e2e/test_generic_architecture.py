"""Architectures without tensor-parallel code are served by transformers' own model on one shard."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from tests.e2e.server import launch
from tests.e2e.sse import stream
from tests.model_factory import build_gpt2

PROMPTS = ["Hello world", "東京は日本の", "def add(a, b):"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt2(tmp_path_factory.mktemp("gpt2"))


def test_gpt2_greedy_ids_equal_transformers_generate(gpt2: Path) -> None:
    server = launch(gpt2, "--max-input-tokens", "64", "--max-total-tokens", "256")
    try:
        body = lambda p: {"inputs": p, "parameters": {"max_new_tokens": 12, "details": True}}  # noqa: E731
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            responses = list(pool.map(lambda p: server.post("/generate", body(p)), PROMPTS))
        tokenizer = Tokenizer.from_file(str(gpt2 / "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(gpt2, dtype=torch.float32)
        for prompt, response in zip(PROMPTS, responses, strict=True):
            ids = tokenizer.encode(prompt).ids
            out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)
            expected = out[0, len(ids):].tolist()
            got = [t["id"] for t in response.json()["details"]["tokens"]]
            assert got == expected[: len(got)] and (len(got) == 12 or got[-1] == 2), prompt
        events = stream(server.url + "/generate_stream", body(PROMPTS[0]))
        assert events[-1]["generated_text"] == responses[0].json()["generated_text"]
        # Prefix caching is on by default; this path cannot share blocks and says so.
        assert "prefix caching is off for GPT2LMHeadModel" in "".join(server.output)
    finally:
        assert server.stop() == 0, server.log()


def test_gpt2_with_two_shards_is_refused_clearly(gpt2: Path) -> None:
    with pytest.raises(RuntimeError, match="can only be served with --num-shard 1"):
        launch(gpt2, "--num-shard", "2", "--max-input-tokens", "64", "--max-total-tokens", "256",
               startup_timeout=120)
