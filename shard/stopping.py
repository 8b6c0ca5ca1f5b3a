"""When a request stops: EOS token, a stop string in the output, or max_new_tokens.

The engine calls `StoppingCriteria.check` once per generated token with the running (non-special) text,
so the check keeps O(1) work per token: it only looks at the part of the text where a stop string could
newly end, never the whole output.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


class FinishReason(enum.IntEnum):
    """Why a request finished; the numbers are the proto's `FinishReason` values."""

    LENGTH = 0
    EOS_TOKEN = 1
    STOP_SEQUENCE = 2


class StoppingCriteria:
    """Per-request stop state, fed one token at a time.

    Precedence when several conditions hold on the same token: EOS, then stop sequence, then length.
    TGI's Python server checks length first; we report the most specific reason instead, because a
    client that sees `length` assumes the output was cut short, while the model (EOS) or the client's
    own stop string actually ended it.
    """

    def __init__(
        self,
        eos_token_ids: frozenset[int],
        max_new_tokens: int,
        stop_sequences: Sequence[str] = (),
        ignore_eos_token: bool = False,
    ) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_new_tokens = max_new_tokens
        # Empty strings would match everywhere and stop at once; the router should not send them.
        self.stop_sequences = tuple(s for s in stop_sequences if s)
        self.ignore_eos_token = ignore_eos_token
        self.current_tokens = 0
        self._max_stop_len = max((len(s) for s in self.stop_sequences), default=0)
        # Length of the text already searched; a match must end after this point to be new.
        self._searched_len = 0

    def check(self, token_id: int, generated_text: str) -> FinishReason | None:
        """Count one token; return why generation stops now, or None to go on."""
        self.current_tokens += 1
        if not self.ignore_eos_token and token_id in self.eos_token_ids:
            return FinishReason.EOS_TOKEN
        if self.stop_sequences and self._stop_sequence_in_tail(generated_text):
            return FinishReason.STOP_SEQUENCE
        if self.current_tokens >= self.max_new_tokens:
            return FinishReason.LENGTH
        return None

    def _stop_sequence_in_tail(self, text: str) -> bool:
        end = len(text)
        if end <= self._searched_len:
            # No new text (a held-back partial character or a special token): nothing new can match.
            # A shorter text than before would mean the caller reset it; start over from there.
            self._searched_len = min(self._searched_len, end)
            return False
        # A match that ends in the new text starts at most max_len - 1 chars before it.
        start = max(0, self._searched_len - self._max_stop_len + 1)
        tail = text[start:]
        self._searched_len = end
        return any(s in tail for s in self.stop_sequences)


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, bool):  # bool is an int subclass; never a token id
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def eos_token_ids_for(model_dir: Path, tokenizer: Tokenizer) -> frozenset[int]:
    """Every id that ends generation: config.json, generation_config.json and the tokenizer's eos token.

    Models disagree about where they declare EOS (Llama 3 lists several ids in generation_config.json
    only, chat models often set a different eos_token in tokenizer_config.json), so take the union.
    """
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        config = _read_json(model_dir / name)
        ids.update(_as_id_list(config.get("eos_token_id")))
        # Multimodal configs nest the language model's settings.
        text_config = config.get("text_config")
        if isinstance(text_config, dict):
            ids.update(_as_id_list(text_config.get("eos_token_id")))
    eos_token = _read_json(model_dir / "tokenizer_config.json").get("eos_token")
    if isinstance(eos_token, dict):  # serialised AddedToken: {"content": "...", ...}
        eos_token = eos_token.get("content")
    if isinstance(eos_token, str):
        token_id = tokenizer.token_to_id(eos_token)
        if token_id is not None:
            ids.add(token_id)
    return frozenset(ids)
