"""When a request stops: EOS token, a stop string in the output, or max_new_tokens.

Per token, the engine passes the newly decoded text through `StopSequenceFilter` (which holds back what
could start a stop string) and then asks `StoppingCriteria.check`; both do O(1) work per token.
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


class StopSequenceFilter:
    """Releases generated text only once it cannot be the start of a stop sequence.

    Text that might begin a stop string is held back; when a stop string completes, the text before it
    is released and the stop string (and anything after it in the same token) never is. So no client
    sees a partial or whole stop sequence, on any route, and the final text equals what was streamed.
    (TGI keeps the stop string in generated_text; OpenAI drops it. We drop it everywhere, consistently.)
    """

    def __init__(self, stop_sequences: Sequence[str]) -> None:
        # Empty strings would match everywhere and stop at once.
        self.stop_sequences = tuple(s for s in stop_sequences if s)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add new text; return (text safe to release now, whether a stop sequence completed)."""
        if not self.stop_sequences:
            return text, False
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self.stop_sequences) if i >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        hold = self._longest_stop_prefix_suffix(buffer)
        self._pending = buffer[len(buffer) - hold:] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Generation ended for another reason: what was held back is ordinary text after all."""
        pending, self._pending = self._pending, ""
        return pending

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        # Only the last (longest stop - 1) characters can start an unfinished stop sequence.
        best = 0
        for stop in self.stop_sequences:
            for k in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:k]):
                    best = k
                    break
        return best


class StoppingCriteria:
    """Per-request stop state, fed one token at a time.

    Precedence when several conditions hold on the same token: EOS, then stop sequence, then a complete
    grammar, then length.
    TGI's Python server checks length first; we report the most specific reason instead, because a
    client that sees `length` assumes the output was cut short, while the model (EOS) or the client's
    own stop string actually ended it.
    """

    def __init__(self, eos_token_ids: frozenset[int], max_new_tokens: int, ignore_eos_token: bool = False) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_new_tokens = max_new_tokens
        self.ignore_eos_token = ignore_eos_token
        self.current_tokens = 0

    def check(self, token_id: int, stop_sequence_matched: bool = False,
              grammar_complete: bool = False) -> FinishReason | None:
        """Count one token; return why generation stops now, or None to go on.

        A grammar that is complete (no token may follow) ends the output as the model's EOS would."""
        self.current_tokens += 1
        if not self.ignore_eos_token and token_id in self.eos_token_ids:
            return FinishReason.EOS_TOKEN
        if stop_sequence_matched:
            return FinishReason.STOP_SEQUENCE
        if grammar_complete:
            return FinishReason.EOS_TOKEN
        if self.current_tokens >= self.max_new_tokens:
            return FinishReason.LENGTH
        return None


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
