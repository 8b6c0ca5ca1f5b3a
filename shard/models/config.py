"""The parts of a Hugging Face config.json that the Llama-family model code reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LLAMA_FAMILY = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}


def architecture_of(model_dir: Path) -> str:
    raw = json.loads((model_dir / "config.json").read_text())
    architectures = raw.get("architectures") or []
    return architectures[0] if architectures else raw.get("model_type", "unknown")


def vocab_size_of(model_dir: Path) -> int:
    """The width of the model's logits as config.json declares it (0 when it does not say)."""
    raw = json.loads((model_dir / "config.json").read_text())
    size = raw.get("vocab_size") or (raw.get("text_config") or {}).get("vocab_size")
    return size if isinstance(size, int) else 0


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    sliding_window: int | None

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        raw = json.loads((model_dir / "config.json").read_text())
        architectures = raw.get("architectures") or []
        architecture = architectures[0] if architectures else raw.get("model_type", "unknown")
        num_heads = raw["num_attention_heads"]
        hidden = raw["hidden_size"]
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        rope_theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        model_type = raw.get("model_type", "")
        return cls(
            architecture=architecture,
            model_type=model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=raw.get("head_dim") or hidden // num_heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=None if rope_type == "default" else dict(rope, rope_type=rope_type),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            # Qwen2 always has q/k/v biases; Llama declares them.
            attention_bias=model_type == "qwen2" or raw.get("attention_bias", False),
            mlp_bias=raw.get("mlp_bias", False),
            sliding_window=raw.get("sliding_window") if raw.get("use_sliding_window", True) else None,
        )

