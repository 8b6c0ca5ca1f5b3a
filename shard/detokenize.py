"""Incremental, UTF-8-safe detokenization: the text each new token makes available.

Decoding one token on its own is wrong in two ways: byte-level vocabularies split a multi-byte
character across tokens (a lone piece decodes to U+FFFD), and SentencePiece-style decoders drop the
leading space of the first token they see. So we decode a small window that starts a few tokens back
(the prefix offset) and emit only what the newest tokens add past the read offset, and only once the
window no longer ends in an incomplete character.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
# How many prompt ids seed the window. One is enough for a decoder to see that the first generated
# token is not at the start of the text (so it keeps its leading space); a few more cover a prompt
# whose last character is itself spread over several byte tokens.
PROMPT_CONTEXT_IDS = 5


def special_token_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Ids of the added tokens marked special (e.g. <|im_end|>), which never enter the running text."""
    return frozenset(i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special)


class IncrementalDetokenizer:
    """Turns one request's generated ids into text, one token at a time.

    `ids` is the decode window: it starts at the prefix offset (ids before it are dropped, so the
    prefix offset is always 0 here) and ids[:read] decodes to text already emitted (or prompt
    context), while ids[read:] is held back. Each step decodes ids and ids[:read] and emits the
    difference when it ends in a whole character; then the prefix moves to read and read to the end,
    so the window stays a few tokens long.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], special_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._special_ids = special_ids
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_IDS:])
        self._read = len(self._ids)
        # Text of ids[:read], kept because it only changes when the offsets move.
        self._prefix_text: str | None = None
        self._text = ""

    @property
    def text(self) -> str:
        """All non-special text emitted so far, including what finish() released."""
        return self._text

    def step(self, token_id: int) -> str:
        """Add one generated token; return the text it makes available now ("" when held back).

        A special token returns its own string (for the token's `text` on the wire) but is not part of
        the running text, matching decode(..., skip_special_tokens=True).
        """
        if token_id in self._special_ids:
            return self._tokenizer.id_to_token(token_id) or ""
        self._ids.append(token_id)
        new_text = self._decode(len(self._ids))
        prefix_text = self._window_prefix_text()
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            # Either the token added nothing visible yet, or it ends inside a multi-byte character:
            # keep the offsets so the next token re-decodes these bytes together with its own.
            return ""
        piece = new_text[len(prefix_text) :]
        self._advance()
        self._text += piece
        return piece

    def finish(self) -> str:
        """Release whatever is still held back at the end of generation, even if it is not valid UTF-8."""
        if self._read == len(self._ids):
            return ""
        new_text = self._decode(len(self._ids))
        piece = new_text[len(self._window_prefix_text()) :]
        self._advance()
        self._text += piece
        return piece

    def _advance(self) -> None:
        # The emitted window becomes the context for the next one; drop ids nobody will decode again
        # so a long generation does not keep its whole id list here.
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._prefix_text = None

    def _window_prefix_text(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._read)
        return self._prefix_text

    def _decode(self, stop: int) -> str:
        # Skipping specials matters only for the prompt context (e.g. "<|im_start|>assistant\n"):
        # generated specials never enter self._ids.
        return self._tokenizer.decode(self._ids[:stop], skip_special_tokens=True)
