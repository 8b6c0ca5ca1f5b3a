"""`--quantize int8 | int4` through the launcher: the same greedy ids on 1 and 2 shards, and the clear
refusal of what is not supported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.server import launch
from tests.e2e.test_tensor_parallel import PROMPTS
from tests.model_factory import build_llama


@pytest.fixture(scope="module")
def aligned_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 2 shards split o_proj's 128 input columns and the MLP's 128 at 64: on int4 group boundaries
    return build_llama(tmp_path_factory.mktemp("aligned-llama"), num_attention_heads=4, num_key_value_heads=2,
                       head_dim=32, intermediate_size=128, suppress_eos=True)


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_greedy_ids_are_the_same_on_one_and_two_shards(aligned_llama: Path, quantize: str) -> None:
    assert greedy_ids(aligned_llama, 1, quantize) == greedy_ids(aligned_llama, 2, quantize)


def greedy_ids(model_dir: Path, num_shard: int, quantize: str) -> list[list[int]]:
    # QUANTIZE: the launcher's flag through its environment variable, as TGI's users set it
    server = launch(model_dir, "--num-shard", str(num_shard), "--max-input-tokens", "128", "--max-total-tokens",
                    "256", env={"QUANTIZE": quantize})
    try:
        ids = []
        for prompt in PROMPTS:
            response = server.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 16,
                                                                                  "details": True}})
            assert response.status_code == 200, response.text
            ids.append([t["id"] for t in response.json()["details"]["tokens"]])
        assert server.log().count(f"{quantize} weights") == num_shard, server.log()
        return ids
    finally:
        assert server.stop() == 0, server.log()


def test_an_unsupported_quantize_stops_the_launcher_before_anything_starts() -> None:
    result = subprocess.run([sys.executable, "-m", "launcher", "--quantize", "gptq"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "--quantize gptq" in result.stderr and "supported: int8" in result.stderr and "int4" in result.stderr


def test_int4_on_two_shards_serves_the_embedded_ggufs_own_blocks() -> None:
    """The launcher hands the shards the GGUF the embedded model comes from: --quantize int4 takes its Q4_1
    matrices as they are (column and row slices on 2 ranks), and the model still knows its capitals."""
    server = launch(None, "--num-shard", "2", "--quantize", "int4", "--max-input-tokens", "256",
                    "--max-total-tokens", "512")
    try:
        prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        response = server.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 16}})
        assert response.status_code == 200, response.text
        assert "Paris" in response.json()["generated_text"]
        assert server.log().count("int4: 210 matrices taken as they are from") == 2, server.log()
    finally:
        assert server.stop() == 0, server.log()
