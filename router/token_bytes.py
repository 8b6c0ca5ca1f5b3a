"""The raw bytes of vocabulary entries, for the `bytes` of OpenAI logprobs.

A token's text is not its bytes: a byte-level BPE token can hold part of a multi-byte character (its
streamed text is then empty, or U+FFFD for an alternative decoded alone), and clients rebuild such
characters from `bytes`. The bytes come from the vocabulary entry itself: byte-level BPE (GPT-2, Llama 3,
SmolLM2) spells each byte as one printable character; SentencePiece-style vocabularies spell a lone byte
as <0xNN> and a space as U+2581. Added tokens (<|im_end|>, ...) are their text; so is every token of a
tokenizer of another kind.
"""

from __future__ import annotations

import json
import re

import tokenizers

from router.types import Token

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"


def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves,
    the 68 others for U+0100 onwards, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    for offset, byte in enumerate(b for b in range(256) if b not in chars):
        chars[byte] = chr(256 + offset)
    return {char: byte for byte, char in chars.items()}


class TokenBytes:
    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        kinds = {d.get("type") for d in decoder.get("decoders", [decoder])}
        self._alphabet = _byte_level_alphabet() if "ByteLevel" in kinds else None
        self._sentencepiece = bool(kinds & {"ByteFallback", "Metaspace"})
        self._added = set(tokenizer.get_added_tokens_decoder())
        self._tokenizer = tokenizer
        self._cache: dict[int, list[int]] = {}

    def of(self, token: Token) -> list[int]:
        cached = self._cache.get(token.id)
        if cached is None:
            cached = self._cache[token.id] = self._vocabulary_bytes(token)
        return cached

    def _vocabulary_bytes(self, token: Token) -> list[int]:
        entry = self._tokenizer.id_to_token(token.id)
        if entry is None or token.id in self._added:
            return list(token.text.encode())
        if self._alphabet is not None:
            alphabet = self._alphabet
            if all(char in alphabet for char in entry):
                return [alphabet[char] for char in entry]
        elif self._sentencepiece:
            byte = _BYTE_TOKEN.fullmatch(entry)
            return [int(byte.group(1), 16)] if byte else list(entry.replace(_METASPACE, " ").encode())
        return list(token.text.encode())
