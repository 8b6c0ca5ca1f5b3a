"""Stopping criteria: EOS, stop strings in the tail of the output, max_new_tokens, and EOS discovery."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from shard.stopping import FinishReason, StoppingCriteria, eos_token_ids_for
from tests.model_factory import build_tokenizer
from tgi_proto import generate_pb2

EOS = 2


def feed(criteria: StoppingCriteria, pieces: Sequence[str], token_id: int = 7) -> list[FinishReason | None]:
    """Feed text pieces one token each, as the engine does with the running text."""
    text = ""
    results = []
    for piece in pieces:
        text += piece
        results.append(criteria.check(token_id, text))
    return results


def test_finish_reason_numbers_match_proto() -> None:
    assert FinishReason.LENGTH == generate_pb2.FINISH_REASON_LENGTH
    assert FinishReason.EOS_TOKEN == generate_pb2.FINISH_REASON_EOS_TOKEN
    assert FinishReason.STOP_SEQUENCE == generate_pb2.FINISH_REASON_STOP_SEQUENCE


def test_length_stops_at_max_new_tokens() -> None:
    criteria = StoppingCriteria(frozenset({EOS}), max_new_tokens=3)
    assert feed(criteria, ["a", "b", "c"]) == [None, None, FinishReason.LENGTH]


def test_eos_stops_unless_ignored() -> None:
    assert StoppingCriteria(frozenset({EOS, 5}), 10).check(5, "") == FinishReason.EOS_TOKEN
    ignoring = StoppingCriteria(frozenset({EOS}), 2, ignore_eos_token=True)
    assert ignoring.check(EOS, "") is None
    assert ignoring.check(EOS, "") == FinishReason.LENGTH


def test_stop_sequence_split_across_tokens() -> None:
    criteria = StoppingCriteria(frozenset({EOS}), 100, stop_sequences=["</answer>"])
    results = feed(criteria, ["The", " answer", "</", "ans", "wer", "> more"])
    assert results == [None] * 4 + [None, FinishReason.STOP_SEQUENCE]


def test_stop_sequence_inside_a_long_new_piece() -> None:
    # The match need not end at the end of the text: a multi-character token can carry text past it.
    criteria = StoppingCriteria(frozenset(), 100, stop_sequences=["STOP"])
    assert feed(criteria, ["abc", "xxSTOPyyzz"]) == [None, FinishReason.STOP_SEQUENCE]


def test_old_text_is_not_searched_again() -> None:
    # A stop string that was present before the criteria saw any text (impossible in practice) is
    # outside the searched tail once the text grows past it: proof that only the tail is read.
    criteria = StoppingCriteria(frozenset(), 100, stop_sequences=["ab"])
    criteria.check(7, "x" * 10)
    assert criteria.check(7, "ab" + "x" * 20) is None


def test_held_back_text_and_special_tokens_do_not_rematch() -> None:
    criteria = StoppingCriteria(frozenset(), 100, stop_sequences=["zz", "yy"])
    assert criteria.check(7, "ab") is None
    assert criteria.check(8, "ab") is None  # a token whose text was held back
    assert criteria.check(9, "abz") is None
    assert criteria.check(9, "abzz") == FinishReason.STOP_SEQUENCE


def test_empty_stop_sequences_are_ignored() -> None:
    criteria = StoppingCriteria(frozenset(), 3, stop_sequences=[""])
    assert feed(criteria, ["a", "b"]) == [None, None]


@pytest.mark.parametrize(
    ("token_id", "text", "expected"),
    [
        (EOS, "done STOP", FinishReason.EOS_TOKEN),  # EOS wins over a stop string and length
        (7, "done STOP", FinishReason.STOP_SEQUENCE),  # a stop string wins over length
        (7, "done", FinishReason.LENGTH),
    ],
)
def test_precedence_on_the_last_allowed_token(token_id: int, text: str, expected: FinishReason) -> None:
    criteria = StoppingCriteria(frozenset({EOS}), max_new_tokens=1, stop_sequences=["STOP"])
    assert criteria.check(token_id, text) == expected


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(out)
    return out


def test_eos_ids_union_of_configs_and_tokenizer(tokenizer_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((tokenizer_dir / name).read_bytes())
    (model_dir / "config.json").write_text(json.dumps({"eos_token_id": 0}))
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 7, 9]}))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # tokenizer_config.json names <|im_end|>, id 2.
    assert eos_token_ids_for(model_dir, tokenizer) == frozenset({0, 2, 7, 9})


def test_eos_ids_with_added_token_dict_and_missing_files(tokenizer_dir: Path, tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    assert eos_token_ids_for(tmp_path, tokenizer) == frozenset()
    config = {"eos_token": {"content": "<|endoftext|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": None}))
    assert eos_token_ids_for(tmp_path, tokenizer) == frozenset({0})
