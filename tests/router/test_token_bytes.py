"""The `bytes` of OpenAI logprobs come from the vocabulary (router/token_bytes.py), not from the text."""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from router.stream import Token
from router.token_bytes import TokenBytes
from tests.model_factory import build_tokenizer


def token(token_id: int, text: str = "") -> Token:
    return Token(token_id, text, -0.5, False)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> tokenizers.Tokenizer:
    directory = tmp_path_factory.mktemp("byte-level")
    build_tokenizer(directory)
    return tokenizers.Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))


@pytest.mark.parametrize("text", ["héllo wörld", "🙂 and 世界", "tab\tnew\nline", "plain ascii"])
def test_byte_level_tokens_give_back_the_texts_bytes(byte_level: tokenizers.Tokenizer, text: str) -> None:
    ids = byte_level.encode(text).ids
    token_bytes = TokenBytes(byte_level)
    pieces = [token_bytes.of(token(i)) for i in ids]
    assert b"".join(bytes(p) for p in pieces) == text.encode()
    if any(ord(c) > 127 for c in text):
        # some token holds part of a character: its own decoded text cannot say which bytes it has
        assert any("\ufffd" in byte_level.decode([i]) or not byte_level.decode([i]) for i in ids)


def test_added_tokens_are_their_text(byte_level: tokenizers.Tokenizer) -> None:
    im_end = byte_level.token_to_id("<|im_end|>")
    assert TokenBytes(byte_level).of(Token(im_end, "<|im_end|>", -0.1, True)) == list(b"<|im_end|>")


def test_sentencepiece_style_byte_tokens_and_word_boundaries() -> None:
    vocab = {"<unk>": 0, "\u2581he": 1, "llo": 2, "<0xE4>": 3, "<0xB8>": 4, "<0x96>": 5}
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    token_bytes = TokenBytes(tokenizer)
    assert token_bytes.of(token(1, " he")) == list(b" he")
    assert [token_bytes.of(token(i)) for i in (3, 4, 5)] == [[0xE4], [0xB8], [0x96]]
    assert bytes(sum((token_bytes.of(token(i)) for i in (1, 2, 3, 4, 5)), [])).decode() == " hello世"


def test_other_tokenizers_fall_back_to_the_text() -> None:
    tokenizer = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert TokenBytes(tokenizer).of(Token(1, "hello", None, False)) == list(b"hello")
    assert TokenBytes(tokenizer).of(Token(7, "gone", None, False)) == list(b"gone")  # not in the vocabulary
