"""`--num-shard N`: N processes, each with a slice of the weights, in lock-step over gloo."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.procs import children_of, cmdline, wait_gone
from tests.e2e.server import launch
from tests.e2e.sse import stream_then
from tests.e2e.test_embedded_model import CHAT_PROMPT
from tests.e2e.test_generate import reference_ids
from tests.model_factory import build_llama

PROMPTS = ["Hello world", "東京は日本の", "Emoji test: 🤗"]


def environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return b"\0" + f.read()


def greedy_ids(model_dir: Path | None, num_shard: int, prompts: list[str], max_new_tokens: int,
               env: dict[str, str] | None = None) -> tuple[list[list[int]], list[float]]:
    """Greedy ids per prompt, and the weight megabytes each rank reported loading."""
    server = launch(model_dir, "--num-shard", str(num_shard), "--max-input-tokens", "128", "--max-total-tokens",
                    "256", env=env)
    try:
        ids = []
        for prompt in prompts:
            response = server.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens,
                                                                                  "details": True}})
            assert response.status_code == 200, response.text
            ids.append([t["id"] for t in response.json()["details"]["tokens"]])
        weights = [float(mb) for mb in re.findall(r"rank \d+/\d+ loaded \S+: ([\d.]+) MB", server.log())]
        assert len(weights) == num_shard, server.log()
        return ids, weights
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize("variant", ["llama-uneven", "llama-tied", "qwen2-bias"])
def test_one_two_and_three_shards_give_transformers_greedy_ids(variant: str, tmp_path: Path) -> None:
    kwargs = {"llama-uneven": {}, "llama-tied": {"tie_word_embeddings": True},
              "qwen2-bias": {"model_type": "qwen2"}}[variant]
    model_dir = build_llama(tmp_path / variant, num_attention_heads=9, num_key_value_heads=3, head_dim=8,
                            suppress_eos=True, **kwargs)
    expected = [reference_ids(model_dir, p, 16) for p in PROMPTS]
    for num_shard in (1, 2, 3):
        ids, weights = greedy_ids(model_dir, num_shard, PROMPTS, 16)
        assert ids == expected, f"--num-shard {num_shard}"
        print(f"{variant} --num-shard {num_shard}: weights per rank (MB) {weights}")


def test_more_shards_than_kv_heads_is_refused_with_a_clear_message(tiny_llama: Path) -> None:
    with pytest.raises(RuntimeError, match="larger than the model's 3 KV heads"):
        launch(tiny_llama, "--num-shard", "4", "--max-input-tokens", "64", "--max-total-tokens", "128",
               startup_timeout=120)


def test_smollm2_greedy_ids_and_weight_split_across_shards(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = os.environ.get("TGI_PY_CACHE") or str(tmp_path_factory.mktemp("tgi-cache"))
    env = {"TGI_PY_CACHE": cache}
    one, (full,) = greedy_ids(None, 1, [CHAT_PROMPT], 24, env)
    two, halves = greedy_ids(None, 2, [CHAT_PROMPT], 24, env)
    three, thirds = greedy_ids(None, 3, [CHAT_PROMPT], 24, env)
    print(f"SmolLM2 weights per rank (MB): 1 shard {full}, 2 shards {halves}, 3 shards {thirds}")
    assert one == two == three
    # 9 query / 3 KV heads: 2 shards split attention 2:1 (whole KV groups), the MLP and vocabulary evenly.
    assert sum(halves) == pytest.approx(full, rel=0.01) and max(halves) < 0.56 * full
    assert sum(thirds) == pytest.approx(full, rel=0.01) and max(thirds) < 0.36 * full


def test_killing_one_of_two_shards_ends_the_stream_and_the_launcher(tiny_llama: Path) -> None:
    server = launch(tiny_llama, "--num-shard", "2", "--max-input-tokens", "64", "--max-total-tokens", "2048")
    children = children_of(server.process.pid)
    shard1 = next(p for p in children if "shard.cli" in cmdline(p) and b"\0RANK=1\0" in environ(p))
    events, _ = stream_then(server.url + "/generate_stream", {"inputs": "Hello", "parameters": {
        "max_new_tokens": 1900}}, lambda: os.kill(shard1, signal.SIGKILL))
    assert events[-1].get("error_type") == "generation", events[-2:]
    assert server.process.wait(timeout=60) != 0
    assert wait_gone(children) == []


def test_two_shards_apply_the_grammar_on_every_rank(tiny_llama: Path) -> None:
    """Each rank samples from the same full logits: each applies the mask, and they stay in lock-step.
    The output validates, and equals one shard's for the same seed."""
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                                               "tags": {"type": "array", "items": {"enum": ["x", "yz"]},
                                                        "maxItems": 3}},
              "required": ["id", "tags"], "additionalProperties": False}
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 60, "seed": 5, "temperature": 0.8,
                                                    "grammar": {"type": "json", "value": schema}}}
    texts = []
    for num_shard in (1, 2):
        server = launch(tiny_llama, "--num-shard", str(num_shard))
        try:
            response = server.post("/generate", body)
            assert response.status_code == 200, response.text
            texts.append(response.json()["generated_text"])
        finally:
            assert server.stop() == 0, server.log()
    jsonschema.validate(json.loads(texts[1]), schema)
    assert texts[0] == texts[1]
