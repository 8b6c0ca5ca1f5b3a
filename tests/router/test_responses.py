"""The streamed token's bytes: the formatted fast path writes exactly what json writes for the event's dict."""

from __future__ import annotations

import json

import pytest

from router.responses import sse_event, stream_event, stream_event_bytes
from router.stream import Finished, Token, TokenEvent
from router.types import SamplingParameters, StoppingParameters, ValidRequest

TEXTS = ["", " hello", "quote \" and backslash \\", "tab\tnew\nline\r", "\x00\x1f\x7f", "é ü 中文 🙂", "\u2028\u2029",
         "<|im_end|>"]
LOGPROBS = [None, -0.5, 0.0, -1e-12, -123.456789, -3.4028234663852886e38]


def request(details: bool = False, full_text: bool = False) -> ValidRequest:
    return ValidRequest(inputs="prompt ", input_ids=(1, 2), sampling=SamplingParameters(),
                        stopping=StoppingParameters(max_new_tokens=4), details=details, return_full_text=full_text)


def generic(valid: ValidRequest, event: TokenEvent) -> bytes:
    return sse_event(stream_event(valid, event))


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("logprob", LOGPROBS)
@pytest.mark.parametrize("special", [False, True])
def test_plain_tokens_render_as_json_does(text: str, logprob: float | None, special: bool) -> None:
    valid = request()
    for index, token_id in [(1, 0), (7, 49151), (100000, 2**31 - 1)]:
        event = TokenEvent(index, Token(token_id, text, logprob, special))
        fast = stream_event_bytes(valid, event)
        assert fast == generic(valid, event)
        body = json.loads(fast.decode().removeprefix("data:"))
        assert body["token"] == {"id": token_id, "text": text, "logprob": logprob, "special": special}


@pytest.mark.parametrize("details", [False, True])
@pytest.mark.parametrize("full_text", [False, True])
def test_other_events_take_the_generic_path(details: bool, full_text: bool) -> None:
    valid = request(details, full_text)
    token = Token(5, " x", -0.25, False)
    last = TokenEvent(4, token, finished=Finished("a b x", "length", 4, 42))
    with_top = TokenEvent(2, token, top_tokens=(Token(6, " y", -1.5, False), token))
    for event in (last, with_top):
        assert stream_event_bytes(valid, event) == generic(valid, event)
    body = json.loads(stream_event_bytes(valid, last).decode().removeprefix("data:"))
    assert body["generated_text"] == ("prompt a b x" if full_text else "a b x")
    assert (body["details"] is not None) == details


@pytest.mark.parametrize("logprob", [float("-inf"), float("nan")])
def test_non_finite_logprobs_fail_as_json_does(logprob: float) -> None:
    # the shard sends NaN for "no logprob" (the batcher maps it to None); anything else non-finite is a bug
    # that must surface the same way on both paths, not as invalid JSON on the wire
    event = TokenEvent(1, Token(1, "x", logprob, False))
    with pytest.raises(ValueError):
        stream_event_bytes(request(), event)
