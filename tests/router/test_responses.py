"""The native routes' bodies and events (router/responses.py): which keys are sent, which are null and which
left out, and the streamed token's fast path, which must write exactly the bytes its model serializes to."""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring

import pydantic_core
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.response_schemas import StreamResponse
from router.responses import _float_json, generate_response, sse_event, stream_event, stream_event_bytes, to_json
from router.stream import Finished, Token, TokenEvent
from router.types import SamplingParameters, StoppingParameters, ValidRequest

TEXTS = ["", " hello", "quote \" and backslash \\", "tab\tnew\nline\r", "\x00\x1f\x7f", "é ü 中文 🙂", "\u2028\u2029",
         "<|im_end|>", "\ufffd", "/slash/"]
LOGPROBS = [None, -0.5, 0.0, -0.0, -1e-12, -123.456789, -3.4028234663852886e38, -1.2e-05, -1e-05, -9.99e-05, -1e-09,
            -0.0001, -1e16, -1.5e16, -1e-7, -5e-324]
FINISHES = [Finished("a b x", "length", 4, 42), Finished("é 🙂", "eos_token", 2, None),
            Finished("stop", "stop_sequence", 1, 0)]


def request(details: bool = False, full_text: bool = False, top_n_tokens: int = 0) -> ValidRequest:
    return ValidRequest(inputs="prompt ", input_ids=(1, 2), sampling=SamplingParameters(),
                        stopping=StoppingParameters(max_new_tokens=4), details=details, return_full_text=full_text,
                        top_n_tokens=top_n_tokens)


def generic(valid: ValidRequest, event: TokenEvent) -> bytes:
    """The event as its model serializes it: what the fast path must equal."""
    return sse_event(stream_event(valid, event))


def payload(event_bytes: bytes) -> dict:
    assert event_bytes.startswith(b"data:{") and event_bytes.endswith(b"}\n\n") and event_bytes.count(b"\n\n") == 1
    return json.loads(event_bytes[len(b"data:"):])


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("logprob", LOGPROBS)
@pytest.mark.parametrize("special", [False, True])
def test_plain_tokens_render_as_the_model_does(text: str, logprob: float | None, special: bool) -> None:
    valid = request()
    for index, token_id in [(1, 0), (7, 49151), (100000, 2**31 - 1)]:
        event = TokenEvent(index, Token(token_id, text, logprob, special))
        fast = stream_event_bytes(valid, event)
        assert fast == generic(valid, event)
        assert payload(fast) == {"index": index, "token": {"id": token_id, "text": text, "logprob": logprob,
                                                           "special": special},
                                 "generated_text": None, "details": None}


@pytest.mark.parametrize("details", [False, True])
@pytest.mark.parametrize("full_text", [False, True])
@pytest.mark.parametrize("finished", [None, *FINISHES])
@pytest.mark.parametrize("top_tokens", [(), (Token(6, " y", -1.5, False), Token(7, "中", -2e-05, True))])
def test_every_kind_of_event_renders_as_the_model_does(details: bool, full_text: bool, finished: Finished | None,
                                                       top_tokens: tuple[Token, ...]) -> None:
    valid = request(details, full_text, top_n_tokens=len(top_tokens))
    event = TokenEvent(4, Token(5, " 🙂", -0.25, False), top_tokens=top_tokens, finished=finished)
    fast = stream_event_bytes(valid, event)
    assert fast == generic(valid, event)
    body = payload(fast)
    assert list(body) == ["index", "token", *(["top_tokens"] if top_tokens else []), "generated_text", "details"]
    if finished is None:
        assert body["generated_text"] is None and body["details"] is None
    else:
        assert body["generated_text"] == ("prompt " if full_text else "") + finished.generated_text
        assert body["details"] == (None if not details else {
            "finish_reason": finished.finish_reason, "generated_tokens": finished.generated_tokens,
            "seed": finished.seed, "input_length": 2})
    StreamResponse.model_validate_json(fast[len(b"data:"):])


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_are_written_as_pydantic_writes_them(value: float) -> None:
    assert _float_json(value) == pydantic_core.to_json(value).decode()


@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_strings_are_escaped_as_pydantic_escapes_them(text: str) -> None:
    assert encode_basestring(text) == pydantic_core.to_json(text).decode()


@pytest.mark.parametrize("logprob", [float("-inf"), float("inf"), float("nan")])
def test_non_finite_logprobs_fail_on_both_paths(logprob: float) -> None:
    # the shard sends NaN for "no logprob" (shard_client maps it to None); anything else non-finite is a bug
    # that must surface the same way on both paths, not as invalid JSON or a silent null on the wire
    event = TokenEvent(1, Token(1, "x", logprob, False))
    with pytest.raises(ValueError):
        stream_event_bytes(request(), event)
    with pytest.raises(ValueError):
        generic(request(), event)


def test_generate_body_sends_details_only_when_asked() -> None:
    prefill = [Token(1, "<s>", None, True), Token(2, "p", -1.0, False)]
    events = [TokenEvent(1, Token(5, "a", -0.5, False), prefill=prefill),
              TokenEvent(2, Token(6, "b", None, True), finished=FINISHES[0])]
    assert json.loads(to_json(generate_response(request(), events, FINISHES[0]))) == {"generated_text": "a b x"}
    body = json.loads(to_json(generate_response(request(details=True, full_text=True), events, FINISHES[0])))
    assert body == {"generated_text": "prompt a b x", "details": {
        "finish_reason": "length", "generated_tokens": 4, "seed": 42,
        "prefill": [{"id": 1, "text": "<s>", "logprob": None}, {"id": 2, "text": "p", "logprob": -1.0}],
        "tokens": [{"id": 5, "text": "a", "logprob": -0.5, "special": False},
                   {"id": 6, "text": "b", "logprob": None, "special": True}]}}


def test_generate_body_has_top_tokens_with_top_n_tokens() -> None:
    top = (Token(7, "c", -0.1, False),)
    events = [TokenEvent(1, Token(5, "a", -0.5, False), top_tokens=top),
              TokenEvent(2, Token(6, "b", -0.2, False), top_tokens=top, finished=FINISHES[1])]
    body = generate_response(request(details=True, top_n_tokens=1), events, FINISHES[1])
    details = json.loads(to_json(body))["details"]
    assert details["seed"] is None and details["prefill"] == []
    assert details["top_tokens"] == [[{"id": 7, "text": "c", "logprob": -0.1, "special": False}]] * 2
    assert "best_of_sequences" not in details
    assert not math.isnan(details["tokens"][0]["logprob"])
