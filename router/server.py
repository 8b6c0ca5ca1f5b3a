"""HTTP routes of the router (aiohttp): admission, validation, queueing and SSE writing."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from router.admission import Admission
from router.batcher import Batcher
from router.chat_template import TemplateError
from router.config import RouterConfig
from router.metrics import Metrics
from router.middleware import api_key_middleware, cors_middleware, cors_on_prepare
from router.playground import add_playground_routes
from router.queue import Entry
from router.response_schemas import CompatGenerateResponse, ErrorResponse, Info, Liveness, TokenizeResponse
from router.responses import error_response, generate_response, json_response, sse_event, stream_event_bytes
from router.schemas import GenerateRequest
from router.shard_client import ShardClient, ShardError
from router.sse import SseResponse, StreamFailedBeforeFirstByte, pump_events
from router.stream import ErrorEvent, TokenEvent
from router.timings import RequestTimings
from router.tracing import RequestTimeline, Tracing
from router.types import ValidRequest
from router.validation import ValidationError, Validator, parse_generate_request, parse_tokenize_request

log = logging.getLogger("router.server")
VERSION = "0.1.0"
ERROR_STATUS = {"generation": 424, "incomplete_generation": 500, "unavailable": 503}


def _error_type(response: web.StreamResponse | None) -> str | None:
    """The error_type of an error_response (None for a success or a stream that already started)."""
    if response is None:
        return "dropped"
    if response.status < 400 or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        return json.loads(response.body).get("error_type") or "error"
    except (ValueError, AttributeError):
        return "error"


class PayloadTooLarge(ValidationError):
    """The body is over --payload-limit: 413, not 422."""


class GenerationFailed(Exception):
    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(event.message)
        self.event = event


class Overloaded(Exception):
    """No admission slot is free (for a multi-prompt request: not one for every prompt)."""


class ShuttingDown(Exception):
    """The server began to drain while this request was arriving or being validated."""


class BodyTimeout(Exception):
    """The client did not send its whole body within --request-body-timeout."""


class Admitted:
    """One HTTP request's admission slots and the entries it queued.

    A slot is taken only when a validated request is submitted: a client still sending its body, or one
    whose body is invalid, holds none.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self.slots = 0
        self.entries: list[Entry] = []

    def admit(self, count: int) -> None:
        """Take `count` more slots, all or none (Overloaded; ShuttingDown once the server drains)."""
        if self.router.draining:
            raise ShuttingDown()
        taken = 0
        for _ in range(count):
            if not self.router.admission.try_acquire():
                for _ in range(taken):
                    self.router.admission.release()
                raise Overloaded()
            taken += 1
        self.slots += taken

    def submit(self, valid: ValidRequest) -> Entry:
        if len(self.entries) >= self.slots:
            self.admit(1)
        entry = self.router.batcher.submit(valid)
        self.entries.append(entry)
        return entry

    def close(self) -> None:
        for entry in self.entries:
            if not entry.stream.done:
                # The client went away (its handler was cancelled or its socket closed).
                self.router.metrics.request_failure.labels("dropped").inc()
                self.router.batcher.cancel(entry)
        for _ in range(self.slots):
            self.router.admission.release()
        self.slots = 0


class Router:
    def __init__(self, config: RouterConfig, validator: Validator, batcher: Batcher, client: ShardClient,
                 max_batch_total_tokens: int, tracing: Tracing | None = None) -> None:
        self.config = config
        self.tracing = tracing or Tracing(None)
        self.metrics: Metrics = batcher.metrics
        self.validator = validator
        self.batcher = batcher
        self.client = client
        self.admission = Admission(config.max_concurrent_requests)
        self.max_batch_total_tokens = max_batch_total_tokens
        self.ready = False
        self.draining = False
        self.batcher_task: asyncio.Task | None = None

    def app(self) -> web.Application:
        middlewares = []
        if self.config.cors_allow_origin:
            middlewares.append(cors_middleware(list(self.config.cors_allow_origin)))
        if self.config.api_key:
            middlewares.append(api_key_middleware(self.config.api_key))
        app = web.Application(client_max_size=self.config.payload_limit, middlewares=middlewares)
        if self.config.cors_allow_origin:
            app.on_response_prepare.append(cors_on_prepare(list(self.config.cors_allow_origin)))
        app.add_routes([
            web.post("/generate", self.generate),
            web.post("/generate_stream", self.generate_stream),
            web.post("/", self.compat_generate),
            web.post("/tokenize", self.tokenize),
            web.get("/info", self.info),
            web.get("/health", self.health),
            web.get("/live", self.live),
            web.get("/metrics", self.metrics_route),
        ])
        add_playground_routes(app, api_key_required=bool(self.config.api_key))  # GET / for browsers, /playground
        return app

    # ---- shared steps -------------------------------------------------------------------------
    async def _read_json_body(self, request: web.Request) -> bytes:
        """The whole body, before any slot is taken; BodyTimeout past --request-body-timeout."""
        if request.content_length is not None and request.content_length > self.config.payload_limit:
            raise self._too_large()  # from the headers alone: not one byte of such a body is read
        try:
            async with asyncio.timeout(self.config.request_body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:  # a chunked body that grew past the limit
            raise self._too_large() from exc
        except TimeoutError as exc:
            raise BodyTimeout() from exc

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"payload is larger than the limit of {self.config.payload_limit} bytes")

    async def _body_timed_out(self, request: web.Request) -> web.StreamResponse:
        """408, then close at once: aiohttp would otherwise linger reading a body that is not coming."""
        self.metrics.request_failure.labels("request_timeout").inc()
        log.info("request body not received within %.0f s: 408", self.config.request_body_timeout,
                 extra={"error_type": "request_timeout"})
        response = error_response(
            408, f"the request body was not received within {self.config.request_body_timeout:g} s",
            "request_timeout")
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        if request.protocol is not None:
            request.protocol.force_close()  # the transport flushes the response before it closes
        return response

    def _shutting_down(self) -> web.Response:
        self.metrics.request_failure.labels("unavailable").inc()
        return error_response(503, "The server is shutting down", "unavailable", headers={"Retry-After": "5"})

    def _overloaded(self) -> web.Response:
        return error_response(429, "Model is overloaded", "overloaded", headers={"Retry-After": "1"})

    async def _events(self, entry: Entry) -> AsyncIterator[TokenEvent]:
        while True:
            event = await entry.stream.next_event()
            if isinstance(event, ErrorEvent):
                raise GenerationFailed(event)
            yield event
            if event.finished is not None:
                return

    async def collect(self, entry: Entry) -> list[TokenEvent]:
        """Every token event of a request, for non-streaming answers; raises GenerationFailed."""
        return [e async for e in self._events(entry)]

    async def validate(self, parsed: GenerateRequest, stream: bool, add_special_tokens: bool = True,
                       tool_grammar: str = "") -> ValidRequest:
        # On a worker thread: tokenizing, and compiling a new grammar (router/grammar.py), take a while.
        valid = await asyncio.to_thread(self.validator.validate, parsed, stream=stream,
                                        add_special_tokens=add_special_tokens, tool_grammar=tool_grammar)
        self.metrics.request_validation_duration.observe(valid.validation_seconds)
        self.metrics.request_input_length.observe(valid.input_length)
        self.metrics.request_max_new_tokens.observe(valid.stopping.max_new_tokens)
        return valid

    async def handle(self, request: web.Request, work: Callable[[bytes, Admitted], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if not self.tracing.enabled:
            return await self._handle(request, work, None)
        timeline = RequestTimeline.begin(request.path, self.config.model_id, request.method)
        response: web.StreamResponse | None = None
        try:
            response = await self._handle(request, work, timeline)
            return response
        finally:  # also when the handler is cancelled (the client went away): no response, 499
            timeline.finish(499 if response is None else response.status, _error_type(response))
            self.tracing.record(timeline, request.headers.get("traceparent"))

    async def _handle(self, request: web.Request,
                      work: Callable[[bytes, Admitted], Awaitable[web.StreamResponse]],
                      timeline: RequestTimeline | None) -> web.StreamResponse:
        """The body, then `work` (parse, validate, submit, answer); errors become statuses; cleanup always.

        A slot is taken only for a request that has fully arrived and is valid; when none is free as the
        body arrives, 429 comes at once, without validating.

        Every route that generates goes through here, so overload, validation, failures and clients that
        disconnect are handled the same way everywhere.
        """
        self.metrics.request_count.inc()
        if self.draining:
            return self._shutting_down()
        admitted = Admitted(self)
        try:
            body = await self._read_json_body(request)
            if not self.admission.available:
                raise Overloaded()
            return await work(body, admitted)
        except BodyTimeout:
            return await self._body_timed_out(request)
        except Overloaded:
            self.metrics.request_failure.labels("overloaded").inc()
            return self._overloaded()
        except ShuttingDown:
            return self._shutting_down()
        except ValidationError as exc:
            log.info("request rejected: %s", exc, extra={"error_type": "validation"})
            self.metrics.request_failure.labels("validation").inc()
            status = 413 if isinstance(exc, PayloadTooLarge) else 422
            return error_response(status, str(exc), getattr(exc, "error_type", "validation"))
        except TemplateError as exc:
            self.metrics.request_failure.labels("template_error").inc()
            return error_response(422, str(exc), "template_error")
        except GenerationFailed as exc:
            log.warning("request failed: %s", exc.event.message, extra={"error_type": exc.event.error_type})
            self.metrics.request_failure.labels(exc.event.error_type).inc()
            return error_response(ERROR_STATUS.get(exc.event.error_type, 424), exc.event.message,
                                  exc.event.error_type)
        finally:
            if timeline is not None and admitted.entries:
                timeline.fill_from_entry(admitted.entries[0])
            admitted.close()

    async def _native(self, request: web.Request, stream: bool | None) -> web.StreamResponse:
        async def work(body: bytes, admitted: Admitted) -> web.StreamResponse:
            parsed = parse_generate_request(body)
            streaming = parsed.stream if stream is None else stream
            valid = await self.validate(parsed, streaming)
            entry = admitted.submit(valid)
            if streaming:
                return await self._stream(request, valid, entry)
            return await self._complete(valid, entry, as_list=stream is None)

        return await self.handle(request, work)

    def observe_token_overhead(self, event: TokenEvent) -> None:
        self.metrics.token_written(event.received_at)

    def record_success(self, valid: ValidRequest, entry: Entry, generated_tokens: int) -> RequestTimings:
        """Metrics and the log line of a request that got its last token; returns its timings."""
        timings = RequestTimings.measure(valid, entry, generated_tokens)
        m = self.metrics
        m.request_success.inc()
        m.request_duration.observe(timings.total)
        m.request_queue_duration.observe(timings.queue)
        m.request_inference_duration.observe(timings.inference)
        m.request_mean_time_per_token_duration.observe(timings.time_per_token)
        m.request_generated_tokens.observe(generated_tokens)
        cached = entry.cached_prompt_tokens or 0  # of input_tokens, reused from the shards' prefix cache
        log.info(
            "request %d done: input_tokens=%d cached_tokens=%d generated_tokens=%d validation=%.1fms queue=%.1fms "
            "inference=%.1fms time_per_token=%.1fms", entry.id, valid.input_length, cached, generated_tokens,
            timings.validation * 1e3, timings.queue * 1e3, timings.inference * 1e3, timings.time_per_token * 1e3,
            extra={"request_id": entry.id, "input_tokens": valid.input_length, "cached_tokens": cached,
                   "generated_tokens": generated_tokens, **timings.log_fields()},
        )
        return timings

    async def _complete(self, valid: ValidRequest, entry: Entry, as_list: bool) -> web.Response:
        events = await self.collect(entry)
        finished = events[-1].finished
        assert finished is not None
        body = generate_response(valid, events, finished)
        timings = self.record_success(valid, entry, finished.generated_tokens)
        return json_response(CompatGenerateResponse([body]) if as_list else body,
                             headers=timings.headers(valid.input_length))

    async def _stream(self, request: web.Request, valid: ValidRequest, entry: Entry) -> web.StreamResponse:
        sse = SseResponse(request)
        try:
            last = await pump_events(
                sse, entry.stream, lambda e: stream_event_bytes(valid, e),
                lambda e: sse_event(ErrorResponse(error=e.message, error_type=e.error_type)),
                self.config.sse_ping_interval,
                self.observe_token_overhead,
            )
        except StreamFailedBeforeFirstByte as exc:
            raise GenerationFailed(exc.event) from exc
        except ConnectionResetError:
            log.info("request %d: client went away mid-stream", entry.id)
            return sse.response or web.Response(status=499)
        if last is None:
            self.metrics.request_failure.labels("generation").inc()
        else:
            assert last.finished is not None
            self.record_success(valid, entry, last.finished.generated_tokens)
        return await sse.end()

    # ---- routes -------------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, stream=False)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, stream=True)

    async def compat_generate(self, request: web.Request) -> web.StreamResponse:
        # POST /: the body's own `stream` decides; non-streaming answers a one-element list.
        return await self._native(request, stream=None)

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_json_body(request)  # PayloadTooLarge (413) is a ValidationError too
            parsed = parse_tokenize_request(body)
            tokens = await asyncio.to_thread(self.validator.tokenize, parsed.inputs, parsed.add_special_tokens)
        except BodyTimeout:
            return await self._body_timed_out(request)
        except ValidationError as exc:
            return error_response(413 if isinstance(exc, PayloadTooLarge) else 422, str(exc), "validation")
        return json_response(TokenizeResponse.model_validate(tokens))

    async def info(self, request: web.Request) -> web.Response:
        c = self.config
        return json_response(Info(
            model_id=c.model_id, model_sha=None, model_pipeline_tag="text-generation",
            model_dtype=None, model_device_type="cpu",
            max_concurrent_requests=c.max_concurrent_requests, max_best_of=c.max_best_of,
            max_stop_sequences=c.max_stop_sequences, max_input_tokens=c.max_input_tokens,
            max_total_tokens=c.max_total_tokens, validation_workers=1,
            max_client_batch_size=c.max_client_batch_size, router="tgi-py", version=VERSION,
            sha=None, docker_label=None,
            max_batch_total_tokens=self.max_batch_total_tokens,
            max_batch_prefill_tokens=c.max_batch_prefill_tokens,
            waiting_served_ratio=c.waiting_served_ratio, max_waiting_tokens=c.max_waiting_tokens,
            max_batch_size=c.max_batch_size,
        ))

    async def metrics_route(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def live(self, request: web.Request) -> web.Response:
        """Liveness: the process answers and the batcher is not stuck in one shard call (a hung shard)."""
        stalled = self.batcher.stalled_for()
        if stalled > self.config.liveness_timeout:
            return error_response(503, f"a shard step has not returned for {stalled:.0f} s", "unhealthy")
        if self.batcher_task is not None and self.batcher_task.done():
            return error_response(503, "the batching loop has stopped", "unhealthy")
        return json_response(Liveness(status="alive"))

    async def health(self, request: web.Request) -> web.Response:
        """Readiness: warmed up, not draining, every shard answers."""
        if not self.ready:
            return error_response(503, "the server is starting", "unhealthy")
        if self.draining:
            return error_response(503, "the server is shutting down", "unhealthy")
        if not self.batcher.healthy:
            return error_response(503, "a shard failed; the server cannot generate", "unhealthy")
        try:
            await self.client.health(timeout=5.0)
        except ShardError as exc:
            return error_response(503, str(exc), "unhealthy")
        return web.Response(status=200)
