"""Incremental detokenization: never half a character, same text as a one-shot decode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from shard.detokenize import IncrementalDetokenizer, special_token_ids
from tests.model_factory import build_tokenizer

TEXTS = [
    "Café crème brûlée, naïve résumé!",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji 🤗🚀 and 👍🏽 then ❤️ plus 🎉🤗.",
    "mixed: zebra Ω ж 한국어 ﬁ ∑ 𝄞 done",  # characters the tiny corpus never saw (single bytes)
    "def add(a, b):\n    return a + b\n",
]
REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("bpe")
    build_tokenizer(out)
    return Tokenizer.from_file(str(out / "tokenizer.json"))


def run(tokenizer: Tokenizer, prompt: Sequence[int], generated: Sequence[int]) -> tuple[list[str], str, str]:
    """Step through `generated`; returns the step outputs, finish() and the final `text`."""
    detok = IncrementalDetokenizer(tokenizer, prompt, special_token_ids(tokenizer))
    pieces = [detok.step(token_id) for token_id in generated]
    return pieces, detok.finish(), detok.text


def test_special_token_ids(bpe: Tokenizer) -> None:
    assert special_token_ids(bpe) == frozenset({0, 1, 2})


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("prompt", ["", "Hello world", "<|im_start|>assistant\n"])
def test_concatenation_equals_one_shot_decode(bpe: Tokenizer, text: str, prompt: str) -> None:
    generated = bpe.encode(text).ids
    pieces, rest, full = run(bpe, bpe.encode(prompt).ids, generated)
    assert "".join(pieces) + rest == bpe.decode(generated, skip_special_tokens=True) == text
    assert full == text
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert rest == ""  # the text ended on a whole character, so nothing was left behind


def test_multibyte_characters_are_held_back_then_released(bpe: Tokenizer) -> None:
    generated = bpe.encode("a🤗ж").ids
    pieces, _, _ = run(bpe, [], generated)
    assert len(generated) > 3  # the emoji and the Cyrillic letter are split into byte pieces
    assert "" in pieces
    assert [p for p in pieces if p] == ["a", "🤗", "ж"]


def test_special_tokens_return_their_string_but_stay_out_of_the_text(bpe: Tokenizer) -> None:
    generated = bpe.encode("Hello 🤗").ids
    # An end-of-turn token in the middle of a split emoji must not disturb it.
    mid = len(generated) - 1
    with_special = generated[:mid] + [2] + generated[mid:] + [0]
    pieces, rest, full = run(bpe, bpe.encode("Hi").ids, with_special)
    assert pieces[mid] == "<|im_end|>"
    assert pieces[-1] == "<|endoftext|>"
    normal = [p for i, p in enumerate(pieces) if with_special[i] not in (0, 2)]
    assert "".join(normal) + rest == "Hello 🤗" == full


def test_finish_releases_an_incomplete_character(bpe: Tokenizer) -> None:
    generated = bpe.encode("ok ж").ids[:-1]  # cut inside the letter (two byte tokens)
    pieces, rest, full = run(bpe, [], generated)
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert rest.endswith(REPLACEMENT)
    assert full == bpe.decode(generated)
    assert "".join(pieces) + rest == full


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_id_sequences_keep_the_invariants(bpe: Tokenizer, data: st.DataObject) -> None:
    vocab = bpe.get_vocab_size()
    generated = data.draw(st.lists(st.integers(0, vocab - 1), max_size=30))
    # Prompts come from encoding text, so they end on a whole character.
    prompt = bpe.encode(data.draw(st.sampled_from(["", "Hi", "Café ", "東京", "🤗", "x ж"]))).ids
    pieces, rest, full = run(bpe, prompt, generated)
    expected = bpe.decode(generated, skip_special_tokens=True)
    specials = {0, 1, 2}
    normal = [p for token_id, p in zip(generated, pieces, strict=True) if token_id not in specials]
    assert "".join(normal) + rest == expected == full
    if REPLACEMENT not in expected:
        assert all(REPLACEMENT not in p for p in pieces) and REPLACEMENT not in rest


def sentencepiece_tokenizer(byte_fallback_decoder: bool) -> Tokenizer:
    """A Llama-style SentencePiece tokenizer: '▁' for spaces, whole-word pieces, byte fallback."""
    words = ["▁Hello", "▁world", "▁there", "▁friend", "▁caf", "é", "▁na", "ï", "ve", "▁", "Hi", "!"]
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab += [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    vocab += [(w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyzHW" if c not in words]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    if byte_fallback_decoder:
        # How Llama 2 / Mistral tokenizer.json files spell it.
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return tokenizer


@pytest.mark.parametrize("byte_fallback_decoder", [True, False])
def test_sentencepiece_keeps_the_leading_space(byte_fallback_decoder: bool) -> None:
    tokenizer = sentencepiece_tokenizer(byte_fallback_decoder)
    ids = tokenizer.encode("Hi there friend Hello world!").ids
    split = ids.index(tokenizer.token_to_id("▁there"))
    prompt, generated = ids[:split], ids[split:]
    # Decoding the generated ids alone loses the space that separates them from the prompt.
    assert not tokenizer.decode(generated).startswith(" ")
    pieces, rest, full = run(tokenizer, prompt, generated)
    assert pieces[0] == " there"
    assert full == " there friend Hello world!"
    assert "".join(pieces) + rest == full


def test_sentencepiece_byte_fallback_characters() -> None:
    tokenizer = sentencepiece_tokenizer(byte_fallback_decoder=True)
    text = "Hi there 🤗 café naïve 東京!"
    ids = tokenizer.encode(text).ids
    assert tokenizer.token_to_id("<0xF0>") in ids  # the emoji really is spelled in bytes
    split = ids.index(tokenizer.token_to_id("▁there"))
    pieces, rest, full = run(tokenizer, ids[:split], ids[split:])
    assert full == text[len("Hi") :]
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "🤗" in pieces and "東" in pieces and "京" in pieces
    assert rest == ""


def test_sentencepiece_special_tokens_in_prompt_context() -> None:
    tokenizer = sentencepiece_tokenizer(byte_fallback_decoder=True)
    ids = tokenizer.encode("Hi there").ids
    prompt = [tokenizer.token_to_id("<s>"), *ids[:-1]]
    pieces, _, full = run(tokenizer, prompt, ids[-1:] + [tokenizer.token_to_id("</s>")])
    assert pieces == [" there", "</s>"]
    assert full == " there"


def test_long_generation_keeps_a_short_window(bpe: Tokenizer, tmp_path: Path) -> None:
    generated = bpe.encode("The quick brown fox jumps over the lazy dog. " * 50).ids
    detok = IncrementalDetokenizer(bpe, bpe.encode("prompt").ids, special_token_ids(bpe))
    for token_id in generated:
        detok.step(token_id)
        assert len(detok._ids) <= 8  # old ids are dropped, so decoding stays O(1) per token
    assert detok.text == bpe.decode(generated)
