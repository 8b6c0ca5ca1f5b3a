"""Pure unit tests of tgi-bench: percentiles, per-request derivations, aggregation, parsing, prompts."""

from __future__ import annotations

import asyncio
import random
import types

import aiohttp
import numpy as np
import pytest

from bench.apis import (
    GenerationSettings,
    Target,
    TargetSpecError,
    build_body,
    iter_sse,
    parse_target,
    send_request,
)
from bench.prompts import estimate_tokens, make_prompts
from bench.report import format_table
from bench.stats import RequestResult, aggregate, distribution, percentile


def test_percentile_matches_numpy_linear() -> None:
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101, 1000):
        values = [rng.uniform(0, 5) for _ in range(n)]
        for q in (0, 1, 10, 50, 90, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-12)


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    d = distribution([])
    assert d["count"] == 0 and d["p50"] is None and d["mean"] is None
    d = distribution([1.0, 2.0, 3.0])
    assert d == {"mean": 2.0, "p50": 2.0, "p90": pytest.approx(2.8), "p99": pytest.approx(2.98), "min": 1.0,
                 "max": 3.0, "count": 3}


def request(start: float, times: list[float], counts: list[int | None] | None = None, end: float | None = None,
            reported: int | None = None, error: str | None = None) -> RequestResult:
    r = RequestResult(start=start, end=end if end is not None else (times[-1] if times else start) + 0.001)
    r.token_times = list(times)
    r.token_counts = list(counts) if counts is not None else [1] * len(times)
    r.reported_tokens = reported
    r.error = error
    return r


def test_one_token_per_event() -> None:
    r = request(10.0, [10.5, 10.6, 10.8, 10.9])
    assert r.ttft == pytest.approx(0.5)
    assert r.output_tokens == 4
    assert r.itl_samples() == pytest.approx([0.1, 0.2, 0.1])
    assert r.tpot == pytest.approx(0.4 / 3)


def test_batched_events_known_counts() -> None:
    # 1 token, then 4 tokens after 80 ms, then 2 after 20 ms
    r = request(0.0, [0.1, 0.18, 0.2], counts=[1, 4, 2])
    assert r.output_tokens == 7
    assert r.itl_samples() == pytest.approx([0.02, 0.01])
    assert r.tpot == pytest.approx(0.1 / 6)


def test_batched_events_counts_from_usage() -> None:
    # OpenAI text chunks (counts unknown) and usage says 9: first event 1, the other two 4 each
    r = request(0.0, [0.1, 0.14, 0.18], counts=[None, None, None], reported=9)
    assert r.output_tokens == 9
    assert r.per_event_tokens() == [1.0, 4.0, 4.0]
    assert r.itl_samples() == pytest.approx([0.01, 0.01])
    # without usage each chunk is taken as one token
    r.reported_tokens = None
    assert r.output_tokens == 3
    assert r.itl_samples() == pytest.approx([0.04, 0.04])
    # a server that held text back (fewer tokens than chunks is impossible, more is): never below 1
    r.reported_tokens = 2
    assert r.per_event_tokens() == [1.0, 1.0, 1.0]


def test_no_tokens() -> None:
    r = request(1.0, [], end=1.2)
    assert r.ttft is None and r.tpot is None and r.itl_samples() == [] and r.output_tokens == 0
    assert r.e2e == pytest.approx(0.2)


def test_aggregate() -> None:
    results = [
        request(0.0, [0.1, 0.2, 0.3], end=0.3),
        request(0.0, [0.2, 0.3, 0.4], end=0.4),
        request(0.3, [], end=0.31, error="http_429"),
        request(0.4, [0.5], end=0.55, error="stream_error:generation"),
        request(0.5, [0.6, 0.8, 1.0], end=1.0),
    ]
    results[0].finish_reason = results[1].finish_reason = "length"
    results[0].prompt_tokens, results[1].prompt_tokens = 10, 20
    s = aggregate("t", 2, results, expected_tokens=3)
    assert s.requests == 5 and s.ok == 3
    assert s.errors == {"http_429": 1, "stream_error:generation": 1}
    assert s.duration_s == pytest.approx(1.0)  # first start 0.0 to last end 1.0
    assert s.output_tokens == 9
    assert s.output_tokens_per_s == pytest.approx(9.0)
    assert s.requests_per_s == pytest.approx(3.0)
    assert s.ttft_s["count"] == 3 and s.ttft_s["p50"] == pytest.approx(0.1)
    assert s.ttft_s["max"] == pytest.approx(0.2)
    assert s.itl_s["count"] == 6
    assert sorted(s.itl_s[k] for k in ("min", "max")) == pytest.approx([0.1, 0.2])
    assert s.tpot_s["count"] == 3
    assert s.e2e_s["max"] == pytest.approx(0.5)
    assert s.tokens_per_request == {"mean": 3.0, "min": 3.0, "max": 3.0}
    assert s.prompt_tokens_mean == 15
    assert s.finish_reasons == {"length": 2, "unknown": 1}
    assert s.short_requests == 0
    d = s.as_dict()
    assert d["failed"] == 2 and d["errors"] == s.errors
    # an explicit wall window wins
    assert aggregate("t", 2, results, wall_start=0.0, wall_end=3.0).output_tokens_per_s == pytest.approx(3.0)
    assert aggregate("t", 1, []).output_tokens_per_s == 0.0


def test_format_table() -> None:
    s = aggregate("ours", 4, [request(0.0, [0.1, 0.2]), request(0.0, [], error="http_429")])
    table = format_table([s])
    assert "ours" in table and "TTFT p50" in table and "errors ours c=4: http_429: 1" in table


def test_parse_target() -> None:
    t = parse_target("ours=http://127.0.0.1:3000")
    assert (t.name, t.base_url, t.api, t.url) == ("ours", "http://127.0.0.1:3000", "tgi",
                                                  "http://127.0.0.1:3000/generate_stream")
    t = parse_target("l=http://h:8080/v1/chat/completions,model=x")
    assert (t.api, t.base_url, t.model) == ("openai-chat", "http://h:8080", "x")
    t = parse_target("c=http://h:8080/,api=openai-completions,ignore_eos=off", "on")
    assert (t.api, t.url, t.ignore_eos) == ("openai-completions", "http://h:8080/v1/completions", "off")
    assert parse_target("p=http://h/prefix").url == "http://h/prefix/generate_stream"
    assert parse_target("d=http://h", "off").ignore_eos == "off"
    for bad in ("x", "=http://h", "x=h:80", "x=http://h,api=foo", "x=http://h,color=red",
                "x=http://h/generate_stream,api=openai-chat", "x=http://h,ignore_eos=maybe"):
        with pytest.raises(TargetSpecError):
            parse_target(bad)


def test_build_body() -> None:
    greedy = GenerationSettings(output_tokens=16)
    tgi = build_body(Target("a", "http://h", "tgi"), "hi", greedy, ignore_eos=True)
    assert tgi == {"inputs": "hi", "parameters": {"max_new_tokens": 16, "details": True, "ignore_eos": True}}
    templated = build_body(Target("a", "http://h", "tgi"), "hi", GenerationSettings(16, prompt_template="chatml"),
                           ignore_eos=False)
    assert templated["inputs"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    sampled = build_body(Target("a", "http://h", "tgi"), "hi", GenerationSettings(8, temperature=0.7, seed=3), False)
    assert sampled["parameters"] == {"max_new_tokens": 8, "details": True, "do_sample": True, "temperature": 0.7,
                                     "seed": 3}
    chat = build_body(Target("b", "http://h", "openai-chat", model="m"), "hi", greedy, ignore_eos=True)
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
                    "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
                    "ignore_eos": True}
    completion = build_body(Target("c", "http://h", "openai-completions",
                                   extra_body={"stream_options": None, "top_k": 1}), "hi", greedy, False)
    assert completion == {"prompt": "hi", "max_tokens": 16, "temperature": 0.0, "stream": True, "top_k": 1}


def test_build_body_with_a_schema() -> None:
    schema = {"type": "object"}
    constrained = GenerationSettings(output_tokens=16, json_schema=schema)
    tgi = build_body(Target("a", "http://h", "tgi"), "hi", constrained, ignore_eos=False)
    assert tgi["parameters"]["grammar"] == {"type": "json", "value": schema}
    chat = build_body(Target("b", "http://h", "openai-chat"), "hi", constrained, ignore_eos=False)
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}
    fresh = GenerationSettings(output_tokens=16, json_schema=schema, fresh_schema=True)
    first, second = (build_body(Target("a", "http://h", "tgi"), "hi", fresh, False)["parameters"]["grammar"]["value"]
                     for _ in range(2))
    assert first["type"] == "object" and first["description"] != second["description"]


class _FakeContent:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def __aiter__(self):
        async def gen():
            for line in self.lines:
                yield line
        return gen()


class _FakeResponse:
    def __init__(self, lines: list[bytes]) -> None:
        self.content = _FakeContent(lines)


def test_iter_sse() -> None:
    lines = [b": ping\n", b"\n", b"data:{\"a\":1}\n", b"\n", b"event: error\r\n", b"data: x\r\n", b"data: y\r\n",
             b"\r\n", b"retry: 10\n", b"\n", b"data: [DONE]\n", b"\n", b"data: tail\n"]

    async def collect():
        return [(event, data) async for _, event, data in iter_sse(_FakeResponse(lines))]

    assert asyncio.run(collect()) == [("message", '{"a":1}'), ("error", "x\ny"), ("message", "[DONE]"),
                                      ("message", "tail")]


def test_prompts_deterministic_and_varied() -> None:
    a = make_prompts(200, 128, seed=1)
    assert a == make_prompts(200, 128, seed=1)
    assert a != make_prompts(200, 128, seed=2)
    assert len({p.text for p in a}) == 200
    lengths = [p.approx_tokens for p in a]
    assert min(lengths) >= 0.4 * 128 and max(lengths) <= 1.7 * 128
    assert max(lengths) - min(lengths) > 0.5 * 128  # varied, not all the same
    assert 0.8 * 128 < sum(lengths) / len(lengths) < 1.2 * 128
    assert all(p.approx_tokens == estimate_tokens(p.text) for p in a)
    # long targets keep growing past the corpus
    (big,) = make_prompts(1, 2000)
    assert big.approx_tokens > 1000
    (tiny,) = make_prompts(1, 2)
    assert tiny.approx_tokens <= 4
    with pytest.raises(ValueError):
        make_prompts(0, 10)


class _StreamResponse(_FakeResponse):
    status = 200

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


class _FlakySession:
    """`post` fails with `errors` in turn, then answers a one-token TGI stream."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def post(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return _StreamResponse([b'data:{"index":1,"token":{"id":1,"text":"a","special":false},'
                                b'"generated_text":"a","details":{"finish_reason":"length",'
                                b'"generated_tokens":1,"input_length":3}}\n', b"\n"])


def test_stale_pooled_connection_is_retried_once() -> None:
    target = Target("t", "http://h", "tgi")

    def send(session: _FlakySession):
        return asyncio.run(send_request(session, target, {}, timeout=5))  # type: ignore[arg-type]

    session = _FlakySession([aiohttp.ServerDisconnectedError()])
    r = send(session)
    assert r.ok and r.reconnects == 1 and r.output_tokens == 1 and session.calls == 2
    # twice in a row is an error, not retried again
    session = _FlakySession([aiohttp.ServerDisconnectedError(), aiohttp.ServerDisconnectedError()])
    r = send(session)
    assert r.error == "ServerDisconnectedError" and session.calls == 2
    # a refused new connection is not a stale one: no retry
    key = types.SimpleNamespace(host="h", port=80, ssl=None)
    refused = aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))  # type: ignore[arg-type]
    session = _FlakySession([refused])
    r = send(session)
    assert r.error == "ClientConnectorError" and r.reconnects == 0 and session.calls == 1
    s = aggregate("t", 1, [send(_FlakySession([aiohttp.ServerDisconnectedError()])) for _ in range(2)])
    assert s.reconnects == 2 and s.ok == 2
