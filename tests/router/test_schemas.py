"""Parsing request bodies: JSON errors, strict types, unknown fields, nulls."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.schemas import GenerateParameters, GenerateRequest, TokenizeRequest
from router.types import ValidRequest
from router.validation import ValidationError, Validator, parse_generate_request, parse_tokenize_request
from tests.router.conftest import LIMITS


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def parse_error(raw: bytes | str) -> str:
    with pytest.raises(ValidationError) as info:
        parse_generate_request(raw)
    return info.value.message


def test_minimal_request_gets_defaults() -> None:
    request = parse_generate_request(body(inputs="Hello"))
    assert request == GenerateRequest(inputs="Hello")
    params = request.parameters
    assert params.max_new_tokens is None and params.stop == [] and params.do_sample is False
    assert request.stream is False


def test_full_request_round_trips() -> None:
    parameters = {
        "max_new_tokens": 10,
        "temperature": 0.5,
        "top_k": 3,
        "top_p": 0.9,
        "typical_p": 0.8,
        "do_sample": True,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.2,
        "presence_penalty": -0.3,
        "ignore_eos": True,
        "seed": 2**64 - 1,
        "stop": ["\n", "User:"],
        "truncate": 5,
        "return_full_text": True,
        "details": True,
        "decoder_input_details": True,
        "top_n_tokens": 2,
        "best_of": 1,
        "watermark": False,
        "grammar": {"type": "regex", "value": "[a-z]+"},
        "adapter_id": None,
    }
    request = parse_generate_request(body(inputs="Hi", parameters=parameters, stream=True))
    dumped = request.parameters.model_dump()
    dumped["grammar"] = {"type": "regex", "value": "[a-z]+"}
    assert dumped == parameters
    assert request.stream is True


def test_integers_are_accepted_for_floats() -> None:
    # serde deserialises 1 into an f32; so do we
    assert (
        parse_generate_request(body(inputs="x", parameters={"temperature": 1})).parameters.temperature == 1.0
    )


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"max_new_tokens": "ten"}, "`parameters.max_new_tokens`: Input should be a valid integer"),
        ({"max_new_tokens": 10.0}, "`parameters.max_new_tokens`: Input should be a valid integer"),
        ({"max_new_tokens": True}, "`parameters.max_new_tokens`: Input should be a valid integer"),
        ({"max_new_tokens": 2**32}, "`parameters.max_new_tokens`: Input should be less than or equal to"),
        ({"temperature": "hot"}, "`parameters.temperature`: Input should be a valid number"),
        ({"temperature": True}, "`parameters.temperature`: Input should be a valid number"),
        ({"do_sample": 1}, "`parameters.do_sample`: Input should be a valid boolean"),
        ({"do_sample": "true"}, "`parameters.do_sample`: Input should be a valid boolean"),
        ({"stop": "x"}, "`parameters.stop`: Input should be a valid list"),
        ({"stop": ["a", 3]}, "`parameters.stop.1`: Input should be a valid string"),
        ({"seed": -1}, "`parameters.seed`: Input should be greater than or equal to 0"),
        ({"seed": 2**64}, "`parameters.seed`: Input should be less than or equal to"),
        ({"top_k": 2**31}, "`parameters.top_k`: Input should be less than or equal to"),
        ({"grammar": {"type": "xml", "value": "x"}}, "`parameters.grammar.type`: Input should be"),
        ({"grammar": {"type": "regex", "value": 5}}, "`parameters.grammar`: Value error"),
        ({"adapter_id": 5}, "`parameters.adapter_id`: Input should be a valid string"),
    ],
)
def test_wrong_types_name_the_field(parameters: dict[str, object], expected: str) -> None:
    raw = json.dumps({"inputs": "x", "parameters": parameters}).encode()
    assert parse_error(raw).startswith(expected)


def test_wrong_inputs() -> None:
    assert parse_error(body(inputs=5)) == "`inputs`: Input should be a valid string"
    assert parse_error(body(parameters={})) == "`inputs`: Field required"
    assert parse_error(body(inputs=["a"])) == "`inputs`: Input should be a valid string"
    assert parse_error(body(inputs="x", parameters=[1])).startswith("`parameters`: Input should be")


def test_malformed_json_and_non_objects() -> None:
    assert parse_error(b"{not json").startswith("request body is not valid JSON")
    assert parse_error(b"").startswith("request body is not valid JSON")
    assert parse_error(b"\xff\xfe\x00garbage").startswith("request body is not valid JSON")
    assert parse_error(b"[1, 2]") == "request body must be a JSON object, got list"
    assert parse_error(b'"inputs"') == "request body must be a JSON object, got str"
    assert parse_error(b"null") == "request body must be a JSON object, got NoneType"


def test_non_standard_json_constants_are_rejected() -> None:
    # Python's json would read these; a NaN temperature would pass every range check
    for constant in ("NaN", "Infinity", "-Infinity"):
        raw = '{"inputs": "x", "parameters": {"temperature": CONSTANT}}'.replace("CONSTANT", constant)
        assert "invalid JSON constant" in parse_error(raw)
    # an overflowing literal is read as inf by json, then refused as non-finite
    overflow = parse_error('{"inputs": "x", "parameters": {"temperature": 1e400}}')
    assert overflow == "`parameters.temperature`: Input should be a finite number"


def test_deep_nesting_is_a_validation_error() -> None:
    raw = '{"inputs": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert parse_error(raw).startswith("request body is not valid JSON")


def test_lone_surrogates_are_rejected() -> None:
    message = parse_error(b'{"inputs": "a\\ud800b"}')
    assert message.startswith("`inputs`: Value error, string is not valid UTF-8")
    assert "parameters.stop.0" in parse_error(b'{"inputs": "a", "parameters": {"stop": ["\\udfff"]}}')
    # a proper surrogate pair is just an emoji
    assert parse_generate_request(b'{"inputs": "\\ud83e\\udd17"}').inputs == "\U0001f917"


def test_unknown_fields_are_ignored_like_tgi() -> None:
    # TGI's GenerateRequest / GenerateParameters have no deny_unknown_fields
    request = parse_generate_request(
        body(inputs="x", parameters={"max_new_tokens": 3, "stop_sequences": ["a"], "foo": 1}, extra=True)
    )
    assert request.parameters.max_new_tokens == 3
    assert request.parameters.stop == []


def test_null_means_default() -> None:
    params = {name: None for name in GenerateParameters.model_fields}
    request = parse_generate_request(body(inputs="x", parameters=params, stream=None))
    assert request == GenerateRequest(inputs="x")
    assert parse_generate_request(body(inputs="x", parameters=None)) == GenerateRequest(inputs="x")


def test_many_errors_are_summarised() -> None:
    message = parse_error(body(inputs="x", parameters={"stop": list(range(50))}))
    assert message.count("Input should be a valid string") == 3
    assert message.endswith("and 47 more errors")


def test_tokenize_request() -> None:
    assert parse_tokenize_request(body(inputs="Hi")) == TokenizeRequest(inputs="Hi")
    request = parse_tokenize_request(body(inputs="Hi", parameters={"truncate": 2}, add_special_tokens=False))
    assert request.add_special_tokens is False and request.parameters is not None
    with pytest.raises(ValidationError, match="`inputs`: Field required"):
        parse_tokenize_request(body(text="Hi"))
    with pytest.raises(ValidationError, match="`add_special_tokens`: Input should be a valid boolean"):
        parse_tokenize_request(body(inputs="Hi", add_special_tokens="no"))


def test_models_are_frozen() -> None:
    request = GenerateRequest(inputs="x")
    with pytest.raises(Exception, match="frozen"):
        request.inputs = "y"  # type: ignore[misc]


# --- property: parse + validate only ever return a ValidRequest or raise ValidationError ---

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-3, 70)
    | st.text(max_size=8)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(-3.0, 3.0)
    | st.sampled_from(["\ud800", "a\udfffb", "", "json", "regex"])
)
_json: st.SearchStrategy[object] = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_grammars = st.fixed_dictionaries({"type": st.sampled_from(["json", "regex", "xml"]), "value": _json})
_unit = st.floats(-0.2, 1.2)
# Well-typed values around each rule's boundaries, so that the semantic rules get exercised too.
_typed: dict[str, st.SearchStrategy[object]] = {
    "max_new_tokens": st.integers(-2, 80),
    "temperature": st.floats(-0.5, 3.0),
    "repetition_penalty": st.floats(-0.5, 3.0),
    "frequency_penalty": st.floats(-3.0, 3.0),
    "top_k": st.integers(-2, 50),
    "top_p": _unit,
    "typical_p": _unit,
    "do_sample": st.booleans(),
    "seed": st.integers(0, 2**64 - 1),
    "stop": st.lists(st.text(max_size=4), max_size=6),
    "truncate": st.integers(-1, 40),
    "return_full_text": st.booleans(),
    "details": st.booleans(),
    "decoder_input_details": st.booleans(),
    "top_n_tokens": st.integers(-1, 7),
    "best_of": st.integers(0, 3),
    "watermark": st.booleans(),
    "grammar": _grammars,
    "adapter_id": st.text(max_size=3),
}
_parameters = st.fixed_dictionaries(
    {},
    optional={
        **{key: st.one_of(st.none(), typed, typed, typed, _json) for key, typed in _typed.items()},
        "unknown": _json,
        "stop_sequences": _json,
    },
)


def _mostly(typed: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """typed nine times in ten, any JSON value otherwise (a plain `|` picks branches unevenly)."""
    return st.integers(0, 9).flatmap(lambda pick: _json if pick == 0 else typed)


_inputs = _mostly(st.text(max_size=300) | st.just("Hello world! " * 30))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inputs=_inputs,
    parameters=_mostly(_parameters),
    stream=st.booleans(),
    drop=st.sampled_from([None, "inputs", "parameters"]),
)
def test_parse_and_validate_never_crash(
    validator: Validator, inputs: object, parameters: object, stream: bool, drop: str | None
) -> None:
    fields = {"inputs": inputs, "parameters": parameters}
    if drop:
        del fields[drop]
    raw = json.dumps(fields).encode()  # NaN / Infinity come out as bare constants, which we refuse
    try:
        valid = validator.validate(parse_generate_request(raw), stream=stream)
    except ValidationError as err:
        assert err.message
        return
    assert isinstance(valid, ValidRequest)
    # what reaches the queue and the shard respects the limits and the wire widths
    assert 1 <= valid.input_length <= LIMITS.max_input_tokens
    assert 1 <= valid.stopping.max_new_tokens
    assert valid.input_length + valid.stopping.max_new_tokens <= LIMITS.max_total_tokens
    assert len(valid.stopping.stop_sequences) <= LIMITS.max_stop_sequences
    assert 0 <= valid.top_n_tokens <= LIMITS.max_top_n_tokens
    sampling = valid.sampling
    assert sampling.temperature > 0 and sampling.repetition_penalty > 0
    assert 0 <= sampling.top_k < 2**31 and 0 < sampling.top_p <= 1 and 0 < sampling.typical_p <= 1
    assert (sampling.seed is not None) == sampling.do_sample
    assert sampling.seed is None or 0 <= sampling.seed < 2**64
    assert not (stream and valid.decoder_input_details)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bodies_only_raise_validation_errors(raw: bytes) -> None:
    try:
        parse_generate_request(raw)
    except ValidationError:
        pass
