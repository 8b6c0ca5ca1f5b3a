"""JSON bodies and SSE events of the TGI-native routes, built as typed models (router.response_schemas)
from stream events, and the two ways every route writes a model: a JSON response or one SSE event."""

from __future__ import annotations

import math
from collections.abc import Mapping
from json.encoder import encode_basestring  # the C string encoder json uses when ensure_ascii=False

from aiohttp import web
from pydantic import BaseModel

from router.response_schemas import Details, ErrorResponse, GenerateResponse, StreamDetails, StreamResponse
from router.stream import TokenEvent
from router.types import Finished, ValidRequest


def to_json(body: BaseModel) -> bytes:
    """The model's JSON: pydantic's own (compact, UTF-8, like TGI's serde_json), with its omitted fields."""
    return body.__pydantic_serializer__.to_json(body)


def json_response(body: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # A whole body: aiohttp sets Content-Length, which huggingface_hub's async client needs to map 429 well.
    return web.Response(body=to_json(body), status=status, headers=headers, content_type="application/json",
                        charset="utf-8")


def error_response(status: int, message: str, error_type: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response(ErrorResponse(error=message, error_type=error_type), status, headers)


def sse_event(body: BaseModel, space: bool = False) -> bytes:
    """One `data:` event. TGI's native routes write no space after the colon; OpenAI routes do."""
    return (b"data: " if space else b"data:") + to_json(body) + b"\n\n"


def full_text(request: ValidRequest, text: str) -> str:
    return request.inputs + text if request.return_full_text else text


def generate_response(request: ValidRequest, events: list[TokenEvent], finished: Finished) -> GenerateResponse:
    details = None
    if request.details:
        details = Details(
            finish_reason=finished.finish_reason,
            generated_tokens=finished.generated_tokens,
            seed=finished.seed,
            prefill=events[0].prefill if events else [],
            tokens=[e.token for e in events],
            top_tokens=[e.top_tokens for e in events] if request.top_n_tokens else None,
        )
    return GenerateResponse(generated_text=full_text(request, finished.generated_text), details=details)


def stream_event(request: ValidRequest, event: TokenEvent) -> StreamResponse:
    finished = event.finished
    details = None
    if finished is not None and request.details:
        details = StreamDetails(finish_reason=finished.finish_reason, generated_tokens=finished.generated_tokens,
                                seed=finished.seed, input_length=request.input_length)
    return StreamResponse(
        index=event.index,
        token=event.token,
        top_tokens=event.top_tokens or None,
        generated_text=None if finished is None else full_text(request, finished.generated_text),
        details=details,
    )


def stream_event_bytes(request: ValidRequest, event: TokenEvent) -> bytes:
    """`sse_event(stream_event(request, event))`, the bytes of one streamed token.

    Most events are a plain token (no top tokens, not the last, a finite logprob): those are formatted
    straight into the bytes the model serializes to (same keys, order, separators and escapes;
    tests/router/test_responses.py compares the two over a range of events), several times faster than
    building and serializing the model, once per token per stream (docs/benchmarks.md, "SSE events").
    """
    token = event.token
    logprob = token.logprob
    plain_logprob = logprob is None or (type(logprob) is float and math.isfinite(logprob))
    if event.top_tokens or event.finished is not None or not plain_logprob:
        return sse_event(stream_event(request, event))
    return (
        f'data:{{"index":{event.index:d},"token":{{"id":{token.id:d},"text":{encode_basestring(token.text)},'
        f'"logprob":{"null" if logprob is None else _float_json(logprob)},'
        f'"special":{"true" if token.special else "false"}}},"generated_text":null,"details":null}}\n\n'
    ).encode()


def _float_json(value: float) -> str:
    """A finite float as pydantic writes it, from Python's repr: the same shortest digits, laid out
    differently only for negative exponents, which pydantic does not pad (`1e-7`, repr `1e-07`), and for
    1e-5 <= |value| < 1e-4, which it writes out (`0.000012`, repr `1.2e-05`).
    tests/router/test_responses.py checks it against pydantic_core.to_json over arbitrary floats."""
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if not e or exponent[0] == "+":
        return text
    power = int(exponent)
    if power == -5:
        sign = "-" if mantissa.startswith("-") else ""
        return f"{sign}0.0000{mantissa.lstrip('-').replace('.', '')}"
    return f"{mantissa}e{power}"
