"""Prefix caching under memory pressure: many distinct long prompts through a small KV pool.

The same requests (distinct prompts, with some earlier prompts coming back, four at a time) go to a
server with the prefix cache and to one without it, both with a pool a few requests fill. The cache
must not cost a single error the other server does not give, must not change a greedy answer, and must
still reuse the prompts that come back after many others have passed through (evicting the least
recently used blocks as the pool fills, never failing a request for room).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from tokenizers import Tokenizer

from tests.e2e.server import LaunchedServer, launch

WORDS = ("river", "stone", "lamp", "orbit", "violet", "cedar", "signal", "harbor", "maple", "quartz", "ember",
         "tundra", "falcon", "prism", "meadow", "copper", "lantern", "glacier", "saffron", "canyon")
# ~64 blocks of 16 tokens for the tiny model: a handful of these requests fill it.
KV_ARGS = ("--max-input-tokens", "200", "--max-total-tokens", "224", "--max-batch-prefill-tokens", "256",
           "--max-batch-total-tokens", "1024", "--max-concurrent-requests", "4")


def long_prompt(rng: random.Random, tokenizer: Tokenizer) -> str:
    """Random words up to 80-180 tokens: a prompt of 5 to 11 full blocks, under --max-input-tokens."""
    target, words = rng.randint(80, 180), [rng.choice(WORDS)]
    while len(tokenizer.encode(" ".join([*words, "x"])).ids) <= target:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def prompts(model_dir: Path) -> list[str]:
    rng = random.Random(7)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    distinct = [long_prompt(rng, tokenizer) for _ in range(36)]
    order = []
    for i, prompt in enumerate(distinct):
        order.append(prompt)
        if i % 6 == 5:  # an earlier prompt comes back after several others passed through the pool
            order.append(distinct[i - 5])
    return order


@pytest.fixture(scope="module")
def servers(tiny_llama: Path) -> Iterator[dict[str, LaunchedServer]]:
    started: dict[str, LaunchedServer] = {}
    try:
        for label, flag in (("on", "true"), ("off", "false")):
            started[label] = launch(tiny_llama, *KV_ARGS, "--prefix-caching", flag)
        yield started
    finally:
        for server in started.values():
            assert server.stop() == 0, server.log()


def run_all(server: LaunchedServer, model_dir: Path) -> list[tuple[int, str]]:
    def one(prompt: str) -> tuple[int, str]:
        response = server.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 12}})
        return response.status_code, response.json().get("generated_text", response.text)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, prompts(model_dir)))


def counter(server: LaunchedServer, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=30).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_a_small_pool_with_the_cache_answers_exactly_as_without_it(servers: dict[str, LaunchedServer],
                                                                    tiny_llama: Path) -> None:
    on, off = servers["on"], servers["off"]
    info_on = requests.get(on.url + "/info", timeout=30).json()
    info_off = requests.get(off.url + "/info", timeout=30).json()
    assert info_on["max_batch_total_tokens"] == info_off["max_batch_total_tokens"] <= 1024

    answers_off = run_all(off, tiny_llama)
    answers_on = run_all(on, tiny_llama)
    assert [status for status, _ in answers_off] == [200] * len(answers_off), answers_off
    assert answers_on == answers_off  # every status and every greedy text

    prompt_tokens = counter(on, "tgi_py_prefix_cache_prompt_tokens")
    hits = counter(on, "tgi_py_prefix_cache_hit_tokens")
    # far more prompt tokens went through than the pool holds, and the prompts that came back still hit
    assert prompt_tokens > 3 * info_on["max_batch_total_tokens"]
    assert hits >= 16 * 6, (hits, prompt_tokens)
    assert counter(off, "tgi_py_prefix_cache_hit_tokens") == 0
    assert "prefix caching on" in on.log() and "prefix caching off" in off.log()
