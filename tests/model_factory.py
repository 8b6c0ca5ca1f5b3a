"""Tiny random models and tokenizers, built on the fly in a temp dir (seconds, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

# Text for the BPE trainer: ASCII, accents, CJK and emoji so that byte-level merges split
# multi-byte characters across tokens the way real vocabularies do.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming tokens one by one over server-sent events is what users see.",
    "Hello world! hello again, world of tiny models and random weights.",
    "Café crème brûlée naïve résumé façade.",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji test: 🤗 🚀 🎉 👍🏽 ❤️ and more 🤗🤗.",
    "def add(a, b):\n    return a + b\n",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def build_tokenizer(out_dir: Path, vocab_size: int = 400) -> int:
    """Train a byte-level BPE tokenizer into out_dir; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 2048,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return tokenizer.get_vocab_size()


def build_llama(
    out_dir: Path,
    *,
    num_attention_heads: int = 6,
    num_key_value_heads: int = 3,
    head_dim: int = 8,
    num_hidden_layers: int = 2,
    intermediate_size: int = 80,
    tie_word_embeddings: bool = False,
    attention_bias: bool = False,
    model_type: str = "llama",
    seed: int = 0,
    suppress_eos: bool = False,
) -> Path:
    """A tiny random Llama-family model with a real tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab_size = build_tokenizer(out_dir)
    eos_id = SPECIAL_TOKENS.index("<|im_end|>")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=num_attention_heads * head_dim,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=SPECIAL_TOKENS.index("<|im_start|>"),
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    if model_type == "llama":
        kwargs["attention_bias"] = attention_bias
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Larger weights than the default init give peaked logits, so greedy choices are not near-ties.
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.15)
        if suppress_eos and not tie_word_embeddings:
            # A zero row gives EOS a logit of 0 while the best of the others is well above it: greedy
            # generation then runs to max_new_tokens, which tests of long-lived streams rely on.
            model.lm_head.weight[eos_id] = 0.0
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_gpt2(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random GPT-2: an architecture without tensor-parallel code here (the generic path)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab_size = build_tokenizer(out_dir)
    eos_id = SPECIAL_TOKENS.index("<|im_end|>")
    config = GPT2Config(vocab_size=vocab_size, n_embd=48, n_layer=2, n_head=4, n_positions=512,
                        bos_token_id=1, eos_token_id=eos_id)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.15)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
