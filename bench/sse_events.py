"""What one streamed token's SSE bytes cost the router: the hand-formatted fast path of the native route
against serializing its pydantic model, and the OpenAI chat chunk as a model against a plain dict.

    python -m bench.sse_events [--number 200000]

Prints microseconds per event (best of 5 timeit repeats). docs/benchmarks.md ("SSE events") keeps the
figures that justify router.responses.stream_event_bytes.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

from router.openai_response_schemas import ChatCompletionChunk, ChatCompletionChunkChoice, ChatDelta
from router.responses import sse_event, stream_event, stream_event_bytes
from router.stream import Token, TokenEvent
from router.types import SamplingParameters, StoppingParameters, ValidRequest

VALID = ValidRequest(inputs="x", input_ids=(1, 2, 3), sampling=SamplingParameters(),
                     stopping=StoppingParameters(max_new_tokens=100))
EVENT = TokenEvent(17, Token(4913, " the", -0.31415926, False))
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
ENVELOPE = {"id": "chatcmpl-0123456789abcdef0123456789abcdef", "created": 1765000000, "model": "HuggingFaceTB/SmolLM2",
            "system_fingerprint": "0.1.0-native"}


def dict_event() -> bytes:
    """The native event as a dict and json's encoder: how every event was written before the models."""
    token = EVENT.token
    data = {"index": EVENT.index, "token": {"id": token.id, "text": token.text, "logprob": token.logprob,
                                            "special": token.special}, "generated_text": None, "details": None}
    return f"data:{_encode(data)}\n\n".encode()


def model_chunk() -> bytes:
    return sse_event(ChatCompletionChunk(**ENVELOPE, object="chat.completion.chunk", choices=[
        ChatCompletionChunkChoice(index=0, delta=ChatDelta(content=EVENT.token.text), logprobs=None,
                                  finish_reason=None)]), space=True)


def dict_chunk() -> bytes:
    return f"data: {_encode({**ENVELOPE, 'object': 'chat.completion.chunk', 'choices': [{'index': 0, 'delta': {'content': EVENT.token.text}, 'logprobs': None, 'finish_reason': None}]})}\n\n".encode()  # noqa: E501


CASES: dict[str, Callable[[], bytes]] = {
    "native token, fast path (stream_event_bytes)": lambda: stream_event_bytes(VALID, EVENT),
    "native token, model (sse_event(stream_event))": lambda: sse_event(stream_event(VALID, EVENT)),
    "native token, dict + json (before the models)": dict_event,
    "chat chunk, model (ChatCompletionChunk)": model_chunk,
    "chat chunk, dict + json (before the models)": dict_chunk,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    assert stream_event_bytes(VALID, EVENT) == sse_event(stream_event(VALID, EVENT))
    for name, case in CASES.items():
        best = min(timeit.repeat(case, number=args.number, repeat=5))
        print(f"{name:50s} {best / args.number * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
