"""Stopping criteria: EOS, stop strings in the tail of the output, max_new_tokens, and EOS discovery."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from shard.stopping import FinishReason, StoppingCriteria, StopSequenceFilter, eos_token_ids_for
from tests.model_factory import build_tokenizer
from tgi_proto import generate_pb2

EOS = 2


def test_finish_reason_numbers_match_proto() -> None:
    assert FinishReason.LENGTH == generate_pb2.FINISH_REASON_LENGTH
    assert FinishReason.EOS_TOKEN == generate_pb2.FINISH_REASON_EOS_TOKEN
    assert FinishReason.STOP_SEQUENCE == generate_pb2.FINISH_REASON_STOP_SEQUENCE


def test_length_stops_at_max_new_tokens() -> None:
    criteria = StoppingCriteria(frozenset({EOS}), max_new_tokens=3)
    assert [criteria.check(7) for _ in range(3)] == [None, None, FinishReason.LENGTH]


def test_eos_stops_unless_ignored() -> None:
    assert StoppingCriteria(frozenset({EOS, 5}), 10).check(5) == FinishReason.EOS_TOKEN
    ignoring = StoppingCriteria(frozenset({EOS}), 2, ignore_eos_token=True)
    assert ignoring.check(EOS) is None
    assert ignoring.check(EOS) == FinishReason.LENGTH


def test_precedence_eos_then_stop_sequence_then_length() -> None:
    assert StoppingCriteria(frozenset({EOS}), 1).check(EOS, True) == FinishReason.EOS_TOKEN
    assert StoppingCriteria(frozenset({EOS}), 1).check(7, True) == FinishReason.STOP_SEQUENCE
    assert StoppingCriteria(frozenset({EOS}), 1).check(7, False) == FinishReason.LENGTH


def run_filter(stops: Sequence[str], pieces: Sequence[str]) -> tuple[list[str], bool, str]:
    f = StopSequenceFilter(stops)
    released = []
    for piece in pieces:
        text, matched = f.push(piece)
        released.append(text)
        if matched:
            return released, True, ""
    return released, False, f.flush()


def test_stop_sequence_split_across_tokens_is_never_released() -> None:
    released, matched, _ = run_filter(["</answer>"], ["The", " answer", "</", "ans", "wer", "> more"])
    assert matched
    assert released == ["The", " answer", "", "", "", ""]
    assert "".join(released) == "The answer"


def test_stop_sequence_inside_a_long_piece_cuts_there() -> None:
    released, matched, _ = run_filter(["STOP"], ["abc", "xxSTOPyyzz"])
    assert matched and "".join(released) == "abcxx"


def test_false_start_is_released_when_it_stops_matching() -> None:
    released, matched, rest = run_filter(["<end>"], ["a<", "en", "x", "b"])
    assert not matched
    assert released == ["a", "", "<enx", "b"]
    assert rest == ""


def test_held_back_prefix_is_flushed_when_generation_ends_otherwise() -> None:
    released, matched, rest = run_filter(["zz"], ["ab", "z"])
    assert not matched and "".join(released) + rest == "abz"


def test_earliest_of_several_stop_sequences_wins() -> None:
    released, matched, _ = run_filter(["yy", "xx"], ["a", "bxxcyy"])
    assert matched and "".join(released) == "ab"


def test_empty_stop_sequences_are_ignored() -> None:
    released, matched, rest = run_filter([""], ["a", "b"])
    assert not matched and "".join(released) == "ab"


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
