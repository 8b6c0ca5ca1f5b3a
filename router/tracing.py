"""OpenTelemetry spans for each request's life, sent over OTLP/gRPC when `--otlp-endpoint` is set.

The handler fills a `RequestTimeline` as the request goes (wall-clock nanoseconds) and hands it to
`Tracing.record` once the answer is out; the spans are made after the fact with those exact start and end
times, so nothing about tracing sits on the hot path of the batcher:

    request                 SERVER, received .. finished; ERROR with the error type when it failed
    ├── validation          received .. validated
    ├── queue               queued .. batched
    ├── prefill             batched .. first_token; prompt tokens reused from the prefix cache
    └── decode              first_token .. finished

A phase that never started has no span (rejected by admission, cancelled while queued); the last phase a
failed or dropped request reached runs to `finished` if it had not ended, and carries the error too. An
incoming W3C `traceparent` makes the request span its child.

With no endpoint nothing of OpenTelemetry is imported or built: `record` is one `if` and returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("router.tracing")

DEFAULT_SERVICE_NAME = "tgi-py.router"
# How long one export (retries included) may take: bounds shutdown when the collector is down.
EXPORT_TIMEOUT_S = 3.0
# A request that ended with one of these error types failed while being validated.
VALIDATION_ERROR_TYPES = frozenset({"validation", "template_error"})


@dataclass
class RequestTimeline:
    """What happened to one HTTP request, and when (time.time_ns(); None for phases that did not happen)."""

    route: str
    method: str = "POST"
    model_id: str | None = None
    received_ns: int = field(default_factory=time.time_ns)
    validated_ns: int | None = None
    queued_ns: int | None = None
    batched_ns: int | None = None  # prefill started
    first_token_ns: int | None = None  # prefill finished
    finished_ns: int | None = None  # the answer is out (or the request failed / was dropped)
    request_id: int | None = None
    input_length: int | None = None
    cached_prompt_tokens: int | None = None  # of input_length, reused from the shards' prefix cache
    max_new_tokens: int | None = None
    generated_tokens: int | None = None
    finish_reason: str | None = None  # length | eos_token | stop_sequence
    error_type: str | None = None  # validation | overloaded | generation | dropped | ...; None on success
    error_message: str | None = None
    status_code: int | None = None
    # To turn the router's time.monotonic() stamps (Entry.queued_at, ...) into wall-clock ones.
    _anchor_monotonic: float = field(default_factory=time.monotonic, repr=False, compare=False)

    @classmethod
    def begin(cls, route: str, model_id: str | None = None, method: str = "POST") -> RequestTimeline:
        """A timeline whose request was received now."""
        return cls(route=route, method=method, model_id=model_id)

    def wall_ns(self, monotonic_s: float | None) -> int | None:
        """A time.monotonic() reading as time.time_ns(), anchored at the moment this timeline was made."""
        if monotonic_s is None:
            return None
        return self.received_ns + round((monotonic_s - self._anchor_monotonic) * 1e9)

    def fill_from_entry(self, entry: Any) -> None:
        """Copy what a queue Entry knows: its id, sizes, and its monotonic stamps as wall-clock ones.

        Call it once the request is over. Reads `queued_at` and `batched_at`, and where they exist
        `entry.first_token_at`, `entry.cached_prompt_tokens`, `entry.finished` (a router.stream.Finished) and
        `entry.stream.error` (the ErrorEvent it ended with); without `finished`, generated_tokens is what its
        stream sent. A stream that neither finished nor failed means the client went away: error_type "dropped".
        """
        request = entry.request
        self.request_id = entry.id
        self.input_length = request.input_length
        self.max_new_tokens = request.stopping.max_new_tokens
        self.queued_ns = self.wall_ns(entry.queued_at)
        if self.validated_ns is None:
            self.validated_ns = self.queued_ns
        self.batched_ns = self.wall_ns(entry.batched_at)
        self.first_token_ns = self.wall_ns(getattr(entry, "first_token_at", None))
        self.cached_prompt_tokens = getattr(entry, "cached_prompt_tokens", None)
        finished = getattr(entry, "finished", None)
        if finished is not None:
            self.generated_tokens = finished.generated_tokens
            self.finish_reason = finished.finish_reason
        else:
            self.generated_tokens = entry.stream.tokens_sent
        error = getattr(entry.stream, "error", None)  # the ErrorEvent it ended with, where the stream keeps it
        if self.error_type is None:
            if error is not None:
                self.error_type, self.error_message = error.error_type, error.message
            elif finished is None and not entry.stream.done:  # neither finished nor failed: the client left
                self.error_type = "dropped"

    def finish(self, status_code: int, error_type: str | None = None, error_message: str | None = None) -> None:
        """The answer is out: stamp finished_ns now (unless it is set already) and the outcome."""
        if self.finished_ns is None:
            self.finished_ns = time.time_ns()
        self.status_code = status_code
        if error_type is not None and self.error_type is None:  # what the entry told is more precise
            self.error_type = error_type
            self.error_message = error_message


def normalize_endpoint(endpoint: str) -> tuple[str, bool]:
    """'http://host:4317', 'grpc://host:4317' or 'host:4317' -> ('host:4317', insecure); https means TLS."""
    endpoint = endpoint.strip()
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return endpoint.rstrip("/"), True
    host = rest.split("/", 1)[0]
    return host, scheme.lower() != "https"


class Tracing:
    """Spans for request timelines, batched and exported over OTLP/gRPC; a no-op without an endpoint."""

    def __init__(self, endpoint: str | None, service_name: str = DEFAULT_SERVICE_NAME) -> None:
        self.enabled = bool(endpoint)
        self.endpoint = endpoint
        self._provider: Any = None
        if not self.enabled:
            return
        # Imported here so that a router without --otlp-endpoint never loads OpenTelemetry.
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        target, insecure = normalize_endpoint(endpoint or "")
        self._trace = trace
        self._empty_context = Context
        self._propagator = TraceContextTextMapPropagator()
        # A provider of our own, never the global one: nothing else in the process is affected.
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter(endpoint=target, insecure=insecure, timeout=EXPORT_TIMEOUT_S)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("router.tracing")
        log.info("exporting request traces over OTLP/gRPC to %s as %s", target, service_name)

    def record(self, timeline: RequestTimeline, traceparent: str | None = None) -> None:
        """Make the spans of one finished request (a child of `traceparent` if that is a valid one)."""
        if not self.enabled:
            return
        try:
            self._record(timeline, traceparent)
        except Exception:  # tracing must never fail a request
            log.exception("could not record the trace of request %s", timeline.request_id)

    def _record(self, t: RequestTimeline, traceparent: str | None) -> None:
        trace = self._trace
        server, internal, error = trace.SpanKind.SERVER, trace.SpanKind.INTERNAL, trace.StatusCode.ERROR
        end = t.finished_ns if t.finished_ns is not None else time.time_ns()
        failed = t.error_type is not None
        # An explicit context, never the ambient one: the request span is a root unless traceparent says not.
        parent = self._propagator.extract({"traceparent": traceparent} if traceparent else {},
                                         context=self._empty_context())

        root = self._tracer.start_span("request", context=parent, kind=server,
                                       attributes=_root_attributes(t), start_time=t.received_ns)
        if failed:
            root.set_status(error, t.error_type)
        in_root = trace.set_span_in_context(root)

        validation_end = t.validated_ns
        if validation_end is None and t.error_type in VALIDATION_ERROR_TYPES:
            validation_end = end
        phases = [
            (name, start, stop)
            for name, start, stop in (
                ("validation", t.received_ns if validation_end is not None else None, t.validated_ns),
                ("queue", t.queued_ns, t.batched_ns),
                ("prefill", t.batched_ns, t.first_token_ns),
                ("decode", t.first_token_ns, t.finished_ns),
            )
            if start is not None
        ]
        for i, (name, start, stop) in enumerate(phases):
            # A phase that never ended ran until the request did (failed, dropped, or decode's own end).
            stop = min(max(stop if stop is not None else end, start), max(end, start))
            span = self._tracer.start_span(name, context=in_root, kind=internal,
                                           attributes=_phase_attributes(name, t), start_time=start)
            if failed and i == len(phases) - 1:  # the phase the request was in when it failed
                span.set_status(error, t.error_type)
            span.end(end_time=stop)
        root.end(end_time=max(end, t.received_ns))

    def force_flush(self, timeout_millis: int = 5000) -> bool:
        """Export every span recorded so far; True when done in time."""
        if self._provider is None:
            return True
        return self._provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush what is left and stop the exporter (blocking: call it off the event loop)."""
        if self._provider is None:
            return
        provider, self._provider, self.enabled = self._provider, None, False
        provider.shutdown()


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


def _root_attributes(t: RequestTimeline) -> dict[str, Any]:
    return _clean({
        "http.request.method": t.method,
        "http.route": t.route,
        "http.response.status_code": t.status_code,
        "gen_ai.operation.name": "text_completion",
        "gen_ai.request.model": t.model_id,
        "gen_ai.request.max_tokens": t.max_new_tokens,
        "gen_ai.usage.input_tokens": t.input_length,
        "gen_ai.usage.cache_read.input_tokens": t.cached_prompt_tokens,
        "gen_ai.usage.output_tokens": t.generated_tokens,
        "gen_ai.response.finish_reasons": [t.finish_reason] if t.finish_reason else None,
        "tgi.request_id": t.request_id,
        "error.type": t.error_type,
        "error.message": t.error_message,
    })


def _phase_attributes(name: str, t: RequestTimeline) -> dict[str, Any]:
    if name == "validation":
        return _clean({"gen_ai.usage.input_tokens": t.input_length, "gen_ai.request.max_tokens": t.max_new_tokens})
    if name == "queue":
        return _clean({"tgi.request_id": t.request_id, "gen_ai.usage.input_tokens": t.input_length})
    if name == "prefill":  # OpenTelemetry's (experimental) name for prompt tokens served from a cache
        return _clean({"tgi.request_id": t.request_id, "gen_ai.usage.input_tokens": t.input_length,
                       "gen_ai.usage.cache_read.input_tokens": t.cached_prompt_tokens})
    return _clean({"tgi.request_id": t.request_id, "gen_ai.usage.output_tokens": t.generated_tokens})
