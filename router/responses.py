"""JSON bodies and SSE events of the TGI-native routes, built from stream events."""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring  # the C string encoder json uses when ensure_ascii=False

from aiohttp import web

from router.stream import Finished, TokenEvent
from router.types import ValidRequest


def error_response(status: int, message: str, error_type: str, headers: dict | None = None) -> web.Response:
    # json_response sets Content-Length, which huggingface_hub's async client needs to map 429 well.
    return web.json_response({"error": message, "error_type": error_type}, status=status, headers=headers)


# One encoder for every event: json.dumps builds a new one on each call that passes options.
_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


def sse_event(data: dict | str, space: bool = False) -> bytes:
    """One `data:` event. TGI's native routes write no space after the colon; OpenAI routes do."""
    payload = data if isinstance(data, str) else _encode_json(data)
    return f"data:{' ' if space else ''}{payload}\n\n".encode()


def full_text(request: ValidRequest, text: str) -> str:
    return request.inputs + text if request.return_full_text else text


def generate_body(request: ValidRequest, events: list[TokenEvent], finished: Finished) -> dict:
    body: dict = {"generated_text": full_text(request, finished.generated_text)}
    if request.details:
        details: dict = {
            "finish_reason": finished.finish_reason,
            "generated_tokens": finished.generated_tokens,
            "seed": finished.seed,
            "prefill": [t.to_json() for t in events[0].prefill] if events else [],
            "tokens": [e.token.to_json() for e in events],
        }
        if request.top_n_tokens:
            details["top_tokens"] = [[t.to_json() for t in e.top_tokens] for e in events]
        body["details"] = details
    return body


def stream_event(request: ValidRequest, event: TokenEvent) -> dict:
    data: dict = {"index": event.index, "token": event.token.to_json()}
    if event.top_tokens:
        data["top_tokens"] = [t.to_json() for t in event.top_tokens]
    finished = event.finished
    data["generated_text"] = None if finished is None else full_text(request, finished.generated_text)
    data["details"] = None
    if finished is not None and request.details:
        data["details"] = {
            "finish_reason": finished.finish_reason,
            "generated_tokens": finished.generated_tokens,
            "seed": finished.seed,
            "input_length": request.input_length,
        }
    return data


def stream_event_bytes(request: ValidRequest, event: TokenEvent) -> bytes:
    """`sse_event(stream_event(request, event))`, the bytes of one streamed token.

    Most events are a plain token (no top tokens, not the last, a finite logprob): those are formatted
    straight into the bytes json would write for the dict (same keys, order, separators and escapes;
    tests/router/test_responses.py compares the two), at a third of the cost, once per token per stream.
    """
    token = event.token
    logprob = token.logprob
    plain_logprob = logprob is None or (type(logprob) is float and math.isfinite(logprob))
    if event.top_tokens or event.finished is not None or not plain_logprob:
        return sse_event(stream_event(request, event))
    return (
        f'data:{{"index": {event.index:d}, "token": {{"id": {token.id:d}, "text": {encode_basestring(token.text)}, '
        f'"logprob": {"null" if logprob is None else repr(logprob)}, '
        f'"special": {"true" if token.special else "false"}}}, "generated_text": null, "details": null}}\n\n'
    ).encode()
