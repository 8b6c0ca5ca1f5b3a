"""Validator rules (CONTRACT section 3), with TGI's messages, and /tokenize offsets."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import processors

from router.schemas import GenerateRequest
from router.types import ValidRequest
from router.validation import (
    ValidationError,
    ValidationLimits,
    Validator,
    load_tokenizer,
    parse_generate_request,
)
from tests.router.conftest import LIMITS

LONG_TEXT = "Hello world! " * 40  # far more than 32 tokens


def validate(
    validator: Validator, inputs: str = "Hello world", *, stream: bool = False, **params: Any
) -> ValidRequest:
    raw = json.dumps({"inputs": inputs, "parameters": params}).encode()
    return validator.validate(parse_generate_request(raw), stream=stream)


def error(validator: Validator, inputs: str = "Hello world", *, stream: bool = False, **params: Any) -> str:
    with pytest.raises(ValidationError) as info:
        validate(validator, inputs, stream=stream, **params)
    return info.value.message


def n_tokens(tokenizer: tokenizers.Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text).ids)


def test_greedy_defaults(validator: Validator, tokenizer: tokenizers.Tokenizer) -> None:
    valid = validate(validator)
    assert valid.input_ids == tuple(tokenizer.encode("Hello world").ids)
    assert valid.sampling.do_sample is False and valid.sampling.seed is None
    assert valid.sampling.temperature == 1.0 and valid.sampling.top_k == 0 and valid.sampling.top_p == 1.0
    assert valid.stopping.stop_sequences == () and valid.top_n_tokens == 0 and valid.truncate is None
    assert valid.details is False and valid.return_full_text is False and valid.decoder_input_details is False
    assert valid.validation_seconds > 0


def test_default_max_new_tokens_is_the_room_left(validator: Validator) -> None:
    valid = validate(validator)
    assert valid.stopping.max_new_tokens == LIMITS.max_total_tokens - valid.input_length
    assert validate(validator, max_new_tokens=None).stopping.max_new_tokens == valid.stopping.max_new_tokens


def test_fields_are_carried(validator: Validator) -> None:
    valid = validate(
        validator,
        max_new_tokens=7,
        stop=["\n", "User:"],
        details=True,
        return_full_text=True,
        decoder_input_details=True,
        top_n_tokens=2,
        repetition_penalty=1.2,
        frequency_penalty=-0.5,
    )
    assert valid.stopping.max_new_tokens == 7 and valid.stopping.stop_sequences == ("\n", "User:")
    assert valid.details and valid.return_full_text and valid.decoder_input_details
    assert valid.top_n_tokens == 2
    assert valid.sampling.repetition_penalty == 1.2 and valid.sampling.frequency_penalty == -0.5


def test_empty_inputs(validator: Validator) -> None:
    assert error(validator, "") == "`inputs` cannot be empty"


def test_input_length_limit(validator: Validator, tokenizer: tokenizers.Tokenizer) -> None:
    given = n_tokens(tokenizer, LONG_TEXT)
    assert error(validator, LONG_TEXT, max_new_tokens=1) == (
        "`inputs` tokens + `max_new_tokens` must be <= 64. "
        f"Given: {given} `inputs` tokens and 1 `max_new_tokens`"
    )
    # with room under max_total_tokens, the input limit itself speaks
    roomy = Validator(tokenizer, ValidationLimits(max_input_tokens=32, max_total_tokens=10_000))
    assert (
        error(roomy, LONG_TEXT, max_new_tokens=1) == f"`inputs` must have less than 32 tokens. Given: {given}"
    )
    assert error(roomy, LONG_TEXT) == f"`inputs` must have less than 32 tokens. Given: {given}"


def test_input_of_exactly_max_input_tokens_is_accepted(tokenizer: tokenizers.Tokenizer) -> None:
    # TGI compares with `>`: the limit itself is allowed
    length = n_tokens(tokenizer, "Hello world")
    exact = Validator(tokenizer, ValidationLimits(max_input_tokens=length, max_total_tokens=length + 1))
    assert validate(exact).stopping.max_new_tokens == 1
    below = Validator(tokenizer, ValidationLimits(max_input_tokens=length - 1, max_total_tokens=length + 5))
    assert error(below) == f"`inputs` must have less than {length - 1} tokens. Given: {length}"


def test_total_tokens_limit(validator: Validator) -> None:
    length = validate(validator).input_length
    room = LIMITS.max_total_tokens - length
    assert validate(validator, max_new_tokens=room).stopping.max_new_tokens == room
    assert error(validator, max_new_tokens=room + 1) == (
        f"`inputs` tokens + `max_new_tokens` must be <= 64. Given: {length} `inputs` tokens and "
        f"{room + 1} `max_new_tokens`"
    )


@pytest.mark.parametrize("value", [0, -1])
def test_max_new_tokens_strictly_positive(validator: Validator, value: int) -> None:
    assert error(validator, max_new_tokens=value) == "`max_new_tokens` must be strictly positive"


def test_truncate_keeps_the_last_tokens(validator: Validator, tokenizer: tokenizers.Tokenizer) -> None:
    valid = validate(validator, LONG_TEXT, truncate=10, max_new_tokens=5)
    assert valid.input_ids == tuple(tokenizer.encode(LONG_TEXT).ids[-10:])
    assert valid.truncate == 10 and valid.inputs == LONG_TEXT
    # truncate larger than the input changes nothing
    assert validate(validator, truncate=30).input_ids == validate(validator).input_ids
    assert validate(validator, LONG_TEXT, truncate=32).input_length == 32


@pytest.mark.parametrize("value", [0, -3, 33])
def test_truncate_range(validator: Validator, value: int) -> None:
    assert error(validator, truncate=value) == (
        f"`truncate` must be strictly positive and less than 32. Given: {value}"
    )


@pytest.mark.parametrize("value", [0.0, -0.5])
def test_temperature(validator: Validator, value: float) -> None:
    assert error(validator, temperature=value) == "`temperature` must be strictly positive"


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_repetition_penalty(validator: Validator, value: float) -> None:
    assert error(validator, repetition_penalty=value) == "`repetition_penalty` must be strictly positive"


@pytest.mark.parametrize("value", [-2.01, 2.01, 100.0])
def test_frequency_penalty(validator: Validator, value: float) -> None:
    assert error(validator, frequency_penalty=value) == "`frequency_penalty` must be >= -2.0 and <= 2.0"
    assert validate(validator, frequency_penalty=-2.0).sampling.frequency_penalty == -2.0
    assert validate(validator, frequency_penalty=2).sampling.frequency_penalty == 2.0


@pytest.mark.parametrize("value", [0, -5])
def test_top_k(validator: Validator, value: int) -> None:
    assert error(validator, top_k=value) == "`top_k` must be strictly positive"


@pytest.mark.parametrize("name", ["top_p", "typical_p"])
@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1])
def test_top_p_and_typical_p(validator: Validator, name: str, value: float) -> None:
    # TGI refuses 1.0 from users even though it is the neutral value
    assert error(validator, **{name: value}) == f"`{name}` must be > 0.0 and < 1.0"
    assert getattr(validate(validator, **{name: 0.5}).sampling, name) == 0.5


@pytest.mark.parametrize(
    "params",
    [{"do_sample": True}, {"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.9}, {"typical_p": 0.9}],
)
def test_sampling_switches_and_draws_a_seed(validator: Validator, params: dict[str, Any]) -> None:
    sampling = validate(validator, **params).sampling
    assert sampling.do_sample is True
    assert sampling.seed is not None and 0 <= sampling.seed < 2**64
    for name, value in params.items():
        if name != "do_sample":
            assert getattr(sampling, name) == value


def test_seeds_are_random_and_user_seeds_kept(validator: Validator) -> None:
    seeds = {validate(validator, do_sample=True).sampling.seed for _ in range(5)}
    assert len(seeds) == 5
    assert validate(validator, do_sample=True, seed=42).sampling.seed == 42
    assert validate(validator, temperature=0.5, seed=0).sampling.seed == 0


def test_no_seed_without_sampling(validator: Validator) -> None:
    # temperature 1.0 is neutral, so it alone does not switch sampling on
    assert validate(validator, temperature=1.0).sampling == validate(validator).sampling
    assert validate(validator, seed=42).sampling.seed is None


def test_stop_sequence_count(validator: Validator) -> None:
    assert validate(validator, stop=["a", "b", "c", "d"]).stopping.stop_sequences == ("a", "b", "c", "d")
    assert (
        error(validator, stop=["a", "b", "c", "d", "e"]) == "`stop` supports up to 4 stop sequences. Given: 5"
    )


@pytest.mark.parametrize("value", [6, -1])
def test_top_n_tokens(validator: Validator, value: int) -> None:
    assert error(validator, top_n_tokens=value) == f"`top_n_tokens` must be >= 0 and <= 5. Given: {value}"
    assert validate(validator, top_n_tokens=5).top_n_tokens == 5
    assert validate(validator, top_n_tokens=0).top_n_tokens == 0


def test_best_of_rules(validator: Validator, tokenizer: tokenizers.Tokenizer) -> None:
    assert validate(validator, best_of=1).sampling.do_sample is False
    assert error(validator, best_of=2) == "you must use sampling when `best_of` is > 1"
    assert error(validator, best_of=2, do_sample=True, seed=1) == "`seed` must not be set when `best_of` > 1"
    assert error(validator, best_of=3, do_sample=True) == "`best_of` must be > 0 and <= 2. Given: 3"
    assert error(validator, best_of=0) == "`best_of` must be > 0 and <= 2. Given: 0"
    assert error(validator, best_of=2, do_sample=True, stream=True) == (
        "`best_of` != 1 is not supported when streaming tokens"
    )
    assert error(validator, best_of=2, do_sample=True) == "`best_of` > 1 is not supported by this server yet"
    single = Validator(tokenizer, ValidationLimits(max_input_tokens=32, max_total_tokens=64, max_best_of=1))
    assert error(single, best_of=2, do_sample=True) == "`best_of` != 1 is not allowed for this endpoint"


def test_decoder_input_details_not_with_streaming(validator: Validator) -> None:
    assert error(validator, decoder_input_details=True, stream=True) == (
        "`decoder_input_details` == true is not supported when streaming tokens"
    )
    assert validate(validator, decoder_input_details=True, stream=False).decoder_input_details is True
    assert validate(validator, details=True, stream=True).details is True


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"watermark": True}, "watermark"),
        ({"adapter_id": "some/lora"}, "adapter_id"),
    ],
)
def test_unsupported_features(validator: Validator, params: dict[str, Any], field: str) -> None:
    assert error(validator, **params).startswith(f"`{field}` is not supported by this server yet")


@pytest.mark.parametrize(
    ("grammar", "message"),
    [
        ({"type": "json", "value": {"type": "strin"}}, "invalid grammar: Invalid type: strin"),
        ({"type": "json", "value": "{not json"}, "grammar `value` is not a JSON schema"),
        ({"type": "json", "value": {"$ref": "#/$defs/nope"}}, "invalid grammar: Pointer '/$defs/nope' does not exist"),
        ({"type": "regex", "value": "[a-"}, "invalid grammar: "),
        # strict refuses what the engine would have to ignore; without strict it is ignored
        ({"type": "json_schema", "value": {"schema": {"type": "object", "if": {}}, "strict": True}},
         'invalid grammar: Unimplemented keys: ["if"]'),
        ({"type": "json", "value": {"type": "object", "properties": {
            f"p{i}": {"type": "string", "description": "x" * 200} for i in range(400)}}}, "grammar is too large"),
    ],
)
def test_bad_grammars_are_refused_with_the_engines_message(validator: Validator, grammar: dict[str, Any],
                                                            message: str) -> None:
    for _ in range(2):  # the second time from the cache, same answer
        assert error(validator, grammar=grammar).startswith(message)


def test_a_grammar_over_the_compile_budget_is_refused(validator: Validator) -> None:
    # Small, and 1.6 s to its first mask with llguidance's default lexer fuel: ours makes it cheap (42 ms),
    # and the time budget refuses whatever still takes too long, before any shard sees it.
    huge = {"type": "regex", "value": "(a{1000}){1000}"}
    started = time.perf_counter()
    validate(validator, grammar=huge)
    assert time.perf_counter() - started < 0.5
    validator.grammars.budget_seconds = 1e-6
    try:
        assert error(validator, grammar={"type": "regex", "value": "[0-9]{1,5}x"}).startswith(
            "grammar is too complex: compiling it took")
    finally:
        validator.grammars.budget_seconds = 0.25


def test_grammars_compile_to_engine_text(validator: Validator) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "if": {}}
    for grammar in [{"type": "json", "value": schema}, {"type": "json_object", "value": json.dumps(schema)},
                    {"type": "json_schema", "value": {"name": "x", "schema": schema}},
                    {"type": "regex", "value": "[0-9]+"}]:
        text = validate(validator, grammar=grammar).sampling.grammar
        assert '"grammars"' in text
    assert validate(validator).sampling.grammar == ""


def test_neutral_unsupported_values_pass(validator: Validator) -> None:
    validate(validator, watermark=False, grammar=None, adapter_id=None)
    validate(validator, adapter_id="")


def test_add_special_tokens(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    bos = tokenizer.token_to_id("<|im_start|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    validator = Validator(tokenizer, LIMITS)
    request = GenerateRequest(inputs="Hello")
    with_bos = validator.validate(request, stream=False)
    without = validator.validate(request, stream=False, add_special_tokens=False)
    assert with_bos.input_ids == (bos, *without.input_ids)
    tokens = validator.tokenize("Hello")
    assert tokens[0] == {"id": bos, "text": "", "start": 0, "stop": 0}
    assert [t["id"] for t in validator.tokenize("Hello", add_special_tokens=False)] == list(without.input_ids)


def test_validate_is_thread_safe(validator: Validator) -> None:
    request = parse_generate_request(json.dumps({"inputs": LONG_TEXT, "parameters": {"truncate": 20}}))
    expected = validator.validate(request, stream=False).input_ids
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: validator.validate(request, stream=False).input_ids, range(64)))
    assert all(ids == expected for ids in results)


@pytest.mark.parametrize(
    "text",
    [
        "Hello world, plain ASCII.",
        "Café crème brûlée",
        "東京は日本の首都です。",
        "Emoji 🤗 and 👍🏽 too",
        "mixed é 東 🚀 x",
    ],
)
def test_tokenize_offsets_are_characters(
    validator: Validator, tokenizer: tokenizers.Tokenizer, text: str
) -> None:
    tokens = validator.tokenize(text)
    assert [t["id"] for t in tokens] == tokenizer.encode(text).ids
    covered: set[int] = set()
    previous_start = 0
    for token in tokens:
        start, stop = token["start"], token["stop"]
        assert 0 <= start < stop <= len(text)  # character indices: never past len(text)
        assert token["text"] == text[start:stop]
        assert start >= previous_start
        previous_start = start
        covered.update(range(start, stop))
    assert covered == set(range(len(text)))
    assert tokens[-1]["stop"] == len(text)


def test_tokenize_ascii_texts_concatenate(validator: Validator) -> None:
    text = "The quick brown fox"
    tokens = validator.tokenize(text)
    assert "".join(t["text"] for t in tokens) == text
    assert validator.tokenize("") == []


def test_tokenize_emoji_pieces_share_the_character(validator: Validator) -> None:
    # 🤗 is 4 UTF-8 bytes split over byte-level tokens; each piece maps to the whole character
    tokens = validator.tokenize("🤗")
    assert len(tokens) > 1
    assert all((t["start"], t["stop"], t["text"]) == (0, 1, "🤗") for t in tokens)


def test_limits_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="must be greater than"):
        ValidationLimits(max_input_tokens=64, max_total_tokens=64)
    with pytest.raises(ValueError, match="max_input_tokens must be >= 1"):
        ValidationLimits(max_input_tokens=0, max_total_tokens=64)
    with pytest.raises(ValueError, match="max_best_of"):
        ValidationLimits(max_input_tokens=1, max_total_tokens=64, max_best_of=0)


def test_load_tokenizer(tokenizer_dir: Path, tmp_path: Path) -> None:
    assert load_tokenizer(tokenizer_dir / "tokenizer.json").get_vocab_size() == 400
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_turns_off_truncation_and_padding(tokenizer_dir: Path, tmp_path: Path) -> None:
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=3)
    tokenizer.enable_padding(length=50)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert loaded.truncation is None and loaded.padding is None
    assert len(loaded.encode(LONG_TEXT).ids) > 32
