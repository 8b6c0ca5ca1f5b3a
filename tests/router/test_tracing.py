"""Request spans reach a real OTLP/gRPC collector (in-process) with the timeline's times, links and attributes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from router.batcher import Batcher, SchedulerConfig
from router.config import RouterConfig
from router.queue import Entry
from router.server import Router
from router.stream import ErrorEvent, Finished
from router.tracing import EXPORT_TIMEOUT_S, RequestTimeline, Tracing, normalize_endpoint
from router.types import SamplingParameters, StoppingParameters, ValidRequest
from router.validation import Validator
from tests.router.fake_shard import FakeShard

MS = 1_000_000


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.resources: list[dict] = []
        self.arrived = threading.Condition()

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        with self.arrived:
            for resource_spans in request.resource_spans:
                self.resources.append(_attributes(resource_spans.resource.attributes))
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
            self.arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[trace_pb2.Span]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.spans) >= count, timeout), self.spans
            return list(self.spans)


def _value(v: AnyValue):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind)


def _attributes(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Served:
    collector: Collector
    endpoint: str


@pytest.fixture
def otlp() -> Iterator[Served]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Served(collector, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)


@pytest.fixture
def tracing(otlp: Served) -> Iterator[Tracing]:
    t = Tracing(f"http://{otlp.endpoint}", service_name="tgi-py.test")
    try:
        yield t
    finally:
        t.shutdown()


def _by_name(spans: list[trace_pb2.Span]) -> dict[str, trace_pb2.Span]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def full_timeline() -> RequestTimeline:
    t0 = time.time_ns()
    return RequestTimeline(
        route="/generate", model_id="tiny-llama", received_ns=t0, validated_ns=t0 + 2 * MS, queued_ns=t0 + 2 * MS,
        batched_ns=t0 + 5 * MS, first_token_ns=t0 + 9 * MS, finished_ns=t0 + 30 * MS, request_id=7,
        input_length=11, max_new_tokens=20, generated_tokens=20, finish_reason="length", status_code=200,
    )


def test_full_request_exports_root_and_phase_spans(otlp: Served, tracing: Tracing) -> None:
    t = full_timeline()
    tracing.record(t)
    assert tracing.force_flush()
    spans = _by_name(otlp.collector.wait_for(5))
    assert set(spans) == {"request", "validation", "queue", "prefill", "decode"}

    root = spans["request"]
    assert root.parent_span_id == b""
    assert root.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (t.received_ns, t.finished_ns)
    assert root.status.code != trace_pb2.Status.STATUS_CODE_ERROR
    assert _attributes(root.attributes) == {
        "http.request.method": "POST", "http.route": "/generate", "http.response.status_code": 200,
        "gen_ai.operation.name": "text_completion", "gen_ai.request.model": "tiny-llama",
        "gen_ai.request.max_tokens": 20, "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 20,
        "gen_ai.response.finish_reasons": ["length"], "tgi.request_id": 7,
    }
    expected = {
        "validation": (t.received_ns, t.validated_ns), "queue": (t.queued_ns, t.batched_ns),
        "prefill": (t.batched_ns, t.first_token_ns), "decode": (t.first_token_ns, t.finished_ns),
    }
    for name, (start, end) in expected.items():
        span = spans[name]
        assert span.trace_id == root.trace_id, name
        assert span.parent_span_id == root.span_id, name
        assert span.kind == trace_pb2.Span.SPAN_KIND_INTERNAL, name
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (start, end), name
        assert span.status.code != trace_pb2.Status.STATUS_CODE_ERROR, name
    assert _attributes(spans["decode"].attributes)["gen_ai.usage.output_tokens"] == 20
    assert otlp.collector.resources[0]["service.name"] == "tgi-py.test"


def test_failed_request_marks_root_and_its_last_phase_as_errors(otlp: Served, tracing: Tracing) -> None:
    t0 = time.time_ns() - 100 * MS
    t = RequestTimeline(route="/generate_stream", model_id="m", received_ns=t0, validated_ns=t0 + MS,
                        queued_ns=t0 + MS, batched_ns=t0 + 3 * MS, request_id=3, input_length=5, max_new_tokens=8)
    t.finish(424, "generation", "Request failed during generation: boom")
    tracing.record(t)
    assert tracing.force_flush()
    spans = _by_name(otlp.collector.wait_for(4))
    assert set(spans) == {"request", "validation", "queue", "prefill"}  # no token ever came: no decode

    root = spans["request"]
    assert root.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert root.status.message == "generation"
    attrs = _attributes(root.attributes)
    assert attrs["error.type"] == "generation"
    assert attrs["http.response.status_code"] == 424
    assert "gen_ai.response.finish_reasons" not in attrs
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (t0, t.finished_ns)
    prefill = spans["prefill"]
    assert (prefill.start_time_unix_nano, prefill.end_time_unix_nano) == (t0 + 3 * MS, t.finished_ns)
    assert prefill.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    for name in ("validation", "queue"):
        assert spans[name].status.code != trace_pb2.Status.STATUS_CODE_ERROR, name
        assert spans[name].parent_span_id == root.span_id


def test_failure_during_decode_marks_decode(otlp: Served, tracing: Tracing) -> None:
    t = full_timeline()
    t.generated_tokens, t.finish_reason = 4, None
    t.finish(500, "incomplete_generation", "the shard went away")  # keeps finished_ns
    tracing.record(t)
    assert tracing.force_flush()
    spans = _by_name(otlp.collector.wait_for(5))
    errors = {name for name, s in spans.items() if s.status.code == trace_pb2.Status.STATUS_CODE_ERROR}
    assert errors == {"request", "decode"}
    assert spans["decode"].end_time_unix_nano == spans["request"].end_time_unix_nano == t.finished_ns
    assert _attributes(spans["request"].attributes)["error.message"] == "the shard went away"


def test_validation_failure_and_overload_have_only_the_phases_they_reached(otlp: Served, tracing: Tracing) -> None:
    t0 = time.time_ns()
    invalid = RequestTimeline(route="/generate", received_ns=t0, finished_ns=t0 + MS, status_code=422,
                              error_type="validation")
    overloaded = RequestTimeline(route="/generate", received_ns=t0, finished_ns=t0 + 1000, status_code=429,
                                 error_type="overloaded")
    tracing.record(invalid)
    tracing.record(overloaded)
    assert tracing.force_flush()
    spans = otlp.collector.wait_for(3)
    roots = {_attributes(s.attributes)["error.type"]: s for s in spans if s.name == "request"}
    children = [s for s in spans if s.name != "request"]
    assert set(roots) == {"validation", "overloaded"}
    assert [s.name for s in children] == ["validation"]
    assert children[0].parent_span_id == roots["validation"].span_id
    assert children[0].status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert (children[0].start_time_unix_nano, children[0].end_time_unix_nano) == (t0, t0 + MS)


def test_traceparent_makes_the_request_span_a_child(otlp: Served, tracing: Tracing) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    tracing.record(full_timeline(), traceparent=f"00-{trace_id}-{parent_id}-01")
    tracing.record(full_timeline(), traceparent="not-a-traceparent")  # ignored: a fresh trace
    assert tracing.force_flush()
    spans = otlp.collector.wait_for(10)
    roots = [s for s in spans if s.name == "request"]
    child_of_caller = next(s for s in roots if s.parent_span_id)
    assert child_of_caller.trace_id == bytes.fromhex(trace_id)
    assert child_of_caller.parent_span_id == bytes.fromhex(parent_id)
    children = [s for s in spans if s.parent_span_id == child_of_caller.span_id]
    assert len(children) == 4 and all(s.trace_id == bytes.fromhex(trace_id) for s in children)
    fresh = next(s for s in roots if not s.parent_span_id)
    assert fresh.trace_id != bytes.fromhex(trace_id)


def test_timeline_from_entry_converts_monotonic_stamps() -> None:
    t = RequestTimeline.begin("/generate", model_id="m")
    request = ValidRequest(inputs="hi", input_ids=(1, 2, 3), sampling=SamplingParameters(),
                           stopping=StoppingParameters(max_new_tokens=4))
    entry = Entry(request)
    entry.batched_at = entry.queued_at + 0.002
    entry.first_token_at = entry.queued_at + 0.005  # what the batcher is to stamp ...
    entry.finished = Finished("abcd", "eos_token", 4, None)  # ... with the last token
    t.fill_from_entry(entry)
    time.sleep(0.006)
    t.finish(200)
    assert t.request_id == entry.id and t.input_length == 3 and t.max_new_tokens == 4
    assert (t.generated_tokens, t.finish_reason) == (4, "eos_token")
    assert t.received_ns <= t.validated_ns == t.queued_ns <= t.batched_ns <= t.first_token_ns <= t.finished_ns
    assert abs(t.batched_ns - t.queued_ns - 2 * MS) <= 1000
    assert abs(t.first_token_ns - t.queued_ns - 5 * MS) <= 1000
    assert t.status_code == 200 and t.error_type is None

    bare = RequestTimeline.begin("/generate")
    bare.fill_from_entry(Entry(request))  # no optional stamps, a stream that never ended: dropped
    assert (bare.batched_ns, bare.first_token_ns, bare.generated_tokens) == (None, None, 0)
    assert bare.error_type == "dropped"

    failed_entry = Entry(request)
    failed_entry.stream.send_error("Request failed during generation: boom", "generation")
    failed_entry.stream.error = ErrorEvent("Request failed during generation: boom", "generation")  # to be kept
    failed = RequestTimeline.begin("/generate")
    failed.fill_from_entry(failed_entry)
    assert (failed.error_type, failed.error_message) == ("generation", "Request failed during generation: boom")


def test_disabled_tracing_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    def touched(*args, **kwargs):
        raise AssertionError("the global tracer provider was touched")

    monkeypatch.setattr(trace, "get_tracer_provider", touched)
    monkeypatch.setattr(trace, "set_tracer_provider", touched)
    monkeypatch.setattr(trace, "get_tracer", touched)
    for endpoint in (None, ""):
        off = Tracing(endpoint)
        assert not off.enabled
        assert off._provider is None
        off.record(object())  # returns before looking at its argument
        off.record(full_timeline(), traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        assert off.force_flush()
        off.shutdown()
    assert not hasattr(off, "_tracer")


def test_disabled_tracing_never_imports_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from router.tracing import RequestTimeline, Tracing\n"
        "t = Tracing(None)\n"
        "t.record(RequestTimeline.begin('/generate'), traceparent='00-' + '1' * 32 + '-' + '2' * 16 + '-01')\n"
        "t.shutdown()\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=Path(__file__).parents[2])


def test_unreachable_collector_neither_blocks_nor_raises() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = Tracing(f"127.0.0.1:{port}")
    start = time.monotonic()
    for _ in range(50):
        t.record(full_timeline())
    assert time.monotonic() - start < 0.5  # export happens on the processor's thread
    t.shutdown()  # gives up after EXPORT_TIMEOUT_S
    assert time.monotonic() - start < EXPORT_TIMEOUT_S + 2


@pytest.mark.parametrize(("given", "target", "insecure"), [
    ("http://collector:4317", "collector:4317", True),
    ("grpc://collector:4317/", "collector:4317", True),
    ("collector:4317", "collector:4317", True),
    ("127.0.0.1:4317", "127.0.0.1:4317", True),
    ("https://collector.example:4317", "collector.example:4317", False),
])
def test_endpoint_forms(given: str, target: str, insecure: bool) -> None:
    assert normalize_endpoint(given) == (target, insecure)


def test_bare_host_port_endpoint_exports(otlp: Served) -> None:
    t = Tracing(otlp.endpoint)
    try:
        t.record(full_timeline())
        assert t.force_flush()
        assert len(otlp.collector.wait_for(5)) == 5
    finally:
        t.shutdown()
    t.record(full_timeline())  # after shutdown: a no-op, not an error


# ---- the router, wired as recommended in router/tracing.py's hand-off ---------------------------------------

async def test_router_sends_one_trace_per_request(tokenizer_dir: Path, validator: Validator, otlp: Served) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    config = RouterConfig.parse(["--tokenizer-dir", str(tokenizer_dir), "--model-id", "tiny-model"])
    shard = FakeShard()
    batcher = Batcher(shard, SchedulerConfig(max_batch_prefill_tokens=100, max_batch_total_tokens=1000,
                                             block_size=16))
    tracing = Tracing(otlp.endpoint)
    router = Router(config, validator, batcher, shard, 1000, tracing=tracing)  # type: ignore[arg-type,call-arg]
    router.ready = True
    loop_task = asyncio.create_task(batcher.run())
    try:
        async with TestClient(TestServer(router.app())) as client:
            r = await client.post("/generate", json={"inputs": "hello world", "parameters": {"max_new_tokens": 3}},
                                  headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
            assert r.status == 200, await r.text()
            r = await client.post("/generate_stream", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
            assert r.status == 200
            await r.read()
            r = await client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 0}})
            assert r.status == 422
            shard.fail_next = "prefill"
            r = await client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
            assert r.status == 424
    finally:
        loop_task.cancel()
    assert tracing.force_flush()
    spans = otlp.collector.wait_for(5 + 5 + 2 + 4)
    tracing.shutdown()

    roots: dict[tuple[str, int], tuple[trace_pb2.Span, dict]] = {}
    for s in spans:
        if s.name == "request":
            a = _attributes(s.attributes)
            roots[(a["http.route"], a["http.response.status_code"])] = (s, a)
    assert len(roots) == 4

    def children(root: trace_pb2.Span) -> dict[str, trace_pb2.Span]:
        return {s.name: s for s in spans if s.parent_span_id == root.span_id}

    ok, a = roots[("/generate", 200)]
    assert ok.trace_id == bytes.fromhex(trace_id) and ok.parent_span_id == bytes.fromhex(parent_id)
    assert a["gen_ai.usage.output_tokens"] == 3 and a["gen_ai.response.finish_reasons"] == ["length"]
    assert a["gen_ai.request.model"] == "tiny-model" and "error.type" not in a
    kids = children(ok)
    assert set(kids) == {"validation", "queue", "prefill", "decode"}
    assert ok.start_time_unix_nano <= kids["validation"].start_time_unix_nano
    assert kids["queue"].end_time_unix_nano == kids["prefill"].start_time_unix_nano
    assert kids["prefill"].end_time_unix_nano == kids["decode"].start_time_unix_nano
    assert kids["decode"].end_time_unix_nano == ok.end_time_unix_nano

    streamed, a = roots[("/generate_stream", 200)]
    assert "error.type" not in a and a["gen_ai.usage.output_tokens"] == 2
    assert set(children(streamed)) == {"validation", "queue", "prefill", "decode"}

    invalid, a = roots[("/generate", 422)]
    assert a["error.type"] == "validation" and invalid.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert set(children(invalid)) == {"validation"}

    failed, a = roots[("/generate", 424)]
    assert a["error.type"] == "generation" and "exploded" in a["error.message"]
    kids = children(failed)
    assert set(kids) == {"validation", "queue", "prefill"}
    assert kids["prefill"].status.code == trace_pb2.Status.STATUS_CODE_ERROR
