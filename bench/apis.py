"""Targets, request bodies and the streaming client: one request in, one `RequestResult` out.

Three wire formats:
- `tgi`: TGI's native `POST /generate_stream`; one SSE event per generated token, the last one with
  `generated_text` and (we ask for `details`) `generated_tokens`.
- `openai-completions`: `POST /v1/completions` with `stream: true`.
- `openai-chat`: `POST /v1/chat/completions` with `stream: true`.
For both OpenAI routes we ask for `stream_options.include_usage`, so that servers which put several
tokens in one chunk (or hold text back) still report the exact number of generated tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench.stats import RequestResult

APIS = ("tgi", "openai-chat", "openai-completions")
ROUTES = {
    "tgi": "/generate_stream",
    "openai-chat": "/v1/chat/completions",
    "openai-completions": "/v1/completions",
}
IGNORE_EOS_MODES = ("auto", "on", "off")

CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
PROMPT_TEMPLATES = {"none": "{prompt}", "chatml": CHATML}


class TargetSpecError(ValueError):
    pass


@dataclass
class Target:
    name: str
    base_url: str
    api: str
    model: str | None = None
    ignore_eos: str = "auto"  # auto | on | off, from the spec or --ignore-eos
    extra_body: dict[str, Any] = field(default_factory=dict)
    # decided at run time
    send_ignore_eos: bool = False
    server_info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def url(self) -> str:
        return self.base_url + ROUTES[self.api]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "api": self.api,
            "model": self.model,
            "ignore_eos_mode": self.ignore_eos,
            "ignore_eos_sent": self.send_ignore_eos,
            "extra_body": self.extra_body,
            "server_info": self.server_info,
            "notes": list(self.notes),
            "error": self.error,
        }


def parse_target(spec: str, default_ignore_eos: str = "auto") -> Target:
    """`NAME=URL[,api=tgi|openai-chat|openai-completions][,model=ID][,ignore_eos=auto|on|off]`.

    URL is the server's base (`http://127.0.0.1:3000`) or the full route, from which the API is
    inferred (`http://127.0.0.1:8080/v1/chat/completions`). Without either, the API is `tgi`.
    """
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise TargetSpecError(f"--target {spec!r}: expected NAME=URL[,api=...]")
    url, *options = [part.strip() for part in rest.split(",")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TargetSpecError(f"--target {spec!r}: {url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    inferred = None
    for api, route in ROUTES.items():
        if path.endswith(route):
            inferred = api
            path = path[: -len(route)]
            break
    base = urlunsplit((parts.scheme, parts.netloc, path, "", "")).rstrip("/")
    values: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in ("api", "model", "ignore_eos"):
            raise TargetSpecError(f"--target {spec!r}: unknown option {option!r} "
                                  f"(known: api=, model=, ignore_eos=)")
        values[key] = value.strip()
    api = values.get("api", inferred or "tgi")
    if api not in APIS:
        raise TargetSpecError(f"--target {spec!r}: api must be one of {', '.join(APIS)}")
    if inferred is not None and api != inferred:
        raise TargetSpecError(f"--target {spec!r}: the URL's route is {ROUTES[inferred]} but api={api}")
    ignore_eos = values.get("ignore_eos", default_ignore_eos)
    if ignore_eos not in IGNORE_EOS_MODES:
        raise TargetSpecError(f"--target {spec!r}: ignore_eos must be one of {', '.join(IGNORE_EOS_MODES)}")
    return Target(name=name, base_url=base, api=api, model=values.get("model") or None, ignore_eos=ignore_eos)


@dataclass(frozen=True)
class GenerationSettings:
    output_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    prompt_template: str = "none"  # applied to the raw-text APIs (tgi, openai-completions) only
    # The JSON schema every answer must follow (TGI's `grammar`, OpenAI's `response_format`); None: free text.
    json_schema: dict[str, Any] | None = None
    # Make each request's schema new to the server (a unique description), so that every one is compiled.
    fresh_schema: bool = False


def build_body(target: Target, prompt: str, settings: GenerationSettings, ignore_eos: bool) -> dict[str, Any]:
    """The JSON body of one streaming request for the target's API."""
    sampling = settings.temperature > 0
    if target.api == "tgi":
        parameters: dict[str, Any] = {"max_new_tokens": settings.output_tokens, "details": True}
        if sampling:
            parameters.update(do_sample=True, temperature=settings.temperature)
            if settings.seed is not None:
                parameters["seed"] = settings.seed
        if ignore_eos:
            parameters["ignore_eos"] = True
        schema = _schema(settings)
        if schema is not None:
            parameters["grammar"] = {"type": "json", "value": schema}
        body: dict[str, Any] = {"inputs": PROMPT_TEMPLATES[settings.prompt_template].format(prompt=prompt),
                                "parameters": parameters}
    else:
        body = {}
        if target.model is not None:
            body["model"] = target.model
        if target.api == "openai-chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = PROMPT_TEMPLATES[settings.prompt_template].format(prompt=prompt)
        body.update(max_tokens=settings.output_tokens, temperature=settings.temperature, stream=True,
                    stream_options={"include_usage": True})
        if sampling and settings.seed is not None:
            body["seed"] = settings.seed
        if ignore_eos:
            body["ignore_eos"] = True
        schema = _schema(settings)
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}
    return _merge(body, target.extra_body)


def _schema(settings: GenerationSettings) -> dict[str, Any] | None:
    if settings.json_schema is None or not settings.fresh_schema:
        return settings.json_schema
    return {**settings.json_schema, "description": f"request {uuid.uuid4().hex}"}


def _merge(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `body`, recursively for nested objects; a None value removes the key."""
    out = dict(body)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


async def iter_sse(response: aiohttp.ClientResponse):
    """Yield (arrival time, event name, data) for each Server-Sent Event; comments (pings) skipped."""
    data: list[str] = []
    event = "message"
    arrived: float | None = None
    async for raw in response.content:
        now = time.perf_counter()
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield arrived if arrived is not None else now, event, "\n".join(data)
            data, event, arrived = [], "message", None
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "data":
            if arrived is None:
                arrived = now
            data.append(value)
        elif key == "event":
            event = value
    if data:  # a last event without its blank line
        yield arrived if arrived is not None else time.perf_counter(), event, "\n".join(data)


def _error_key(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    kind = payload.get("error_type")
    if kind is None and isinstance(error, dict):
        kind = error.get("type") or error.get("code")
    return f"stream_error:{kind or 'unknown'}"


def _stale_connection(exc: BaseException) -> bool:
    """A pooled keep-alive connection that the server had closed (llama.cpp's server does this after
    some streamed responses): the request never reached it, so it is sent again on a new connection."""
    if isinstance(exc, aiohttp.ClientConnectorError):  # a new connection that failed: no retry
        return False
    return isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))


async def send_request(session: aiohttp.ClientSession, target: Target, body: dict[str, Any],
                       timeout: float, headers: dict[str, str] | None = None) -> RequestResult:
    """Send one streaming request and time it. Never raises (except cancellation): failures are
    recorded in `RequestResult.error`.

    A request whose pooled connection turns out to be closed before any response arrived is sent once
    more (counted in `RequestResult.reconnects`); its time counts from the first attempt."""
    result = RequestResult(start=time.perf_counter())
    try:
        response = None
        for attempt in range(2):
            try:
                response = await session.post(target.url, json=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=timeout))
                break
            except Exception as exc:
                if attempt == 0 and _stale_connection(exc):
                    result.reconnects += 1
                    continue
                raise
        assert response is not None
        async with response:
            if response.status != 200:
                text = await response.text(errors="replace")
                result.error = f"http_{response.status}"
                result.error_detail = text[:500]
            elif target.api == "tgi":
                await _read_tgi(response, result)
            else:
                await _read_openai(response, result, chat=target.api == "openai-chat")
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        result.error = "timeout"
    except Exception as exc:  # noqa: BLE001 - every failure is a measurement, not a crash
        result.error = type(exc).__name__
        result.error_detail = str(exc)[:500]
    result.end = time.perf_counter()
    return result


async def _read_tgi(response: aiohttp.ClientResponse, result: RequestResult) -> None:
    finished = False
    async for arrived, _event, data in iter_sse(response):
        try:
            payload = json.loads(data)
        except json.JSONDecodeError:
            result.error, result.error_detail = "bad_event", data[:500]
            return
        if not isinstance(payload, dict):
            continue
        if "error" in payload:
            result.error, result.error_detail = _error_key(payload), str(payload.get("error"))[:500]
            return
        if payload.get("token") is not None:
            result.token_times.append(arrived)
            result.token_counts.append(1)  # TGI sends exactly one token per event
        if payload.get("generated_text") is not None:
            finished = True
            result.text = payload["generated_text"]
            details = payload.get("details") or {}
            result.finish_reason = details.get("finish_reason")
            if isinstance(details.get("generated_tokens"), int):
                result.reported_tokens = details["generated_tokens"]
            if isinstance(details.get("input_length"), int):
                result.prompt_tokens = details["input_length"]
    if not finished:
        result.error = "incomplete_stream"


async def _read_openai(response: aiohttp.ClientResponse, result: RequestResult, chat: bool) -> None:
    finished = False
    pieces: list[str] = []  # the generated text (reasoning aside), for result.text
    async for arrived, _event, data in iter_sse(response):
        if data.strip() == "[DONE]":
            finished = True
            break
        try:
            payload = json.loads(data)
        except json.JSONDecodeError:
            result.error, result.error_detail = "bad_event", data[:500]
            return
        if not isinstance(payload, dict):
            continue
        if payload.get("error") is not None:
            result.error, result.error_detail = _error_key(payload), str(payload.get("error"))[:500]
            return
        usage = payload.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                result.reported_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                result.prompt_tokens = usage["prompt_tokens"]
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            finish = choice.get("finish_reason")
            if chat:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                text = (content or "") + (delta.get("reasoning_content") or "")
                # TGI (and tgi-py) send one chunk per token, with empty content for a token whose text
                # is held back (an incomplete UTF-8 sequence): that is a token event too. The role-only
                # opening chunk (vLLM: content "") and the closing chunk are not.
                bare = isinstance(content, str) and "role" not in delta and not finish
            else:
                content = choice.get("text")
                text = content or ""
                bare = isinstance(content, str) and not finish
            if isinstance(content, str) and content:
                pieces.append(content)
            tokens = _logprob_tokens(choice.get("logprobs"))
            if text or tokens or bare:
                result.token_times.append(arrived)
                result.token_counts.append(tokens)
            if finish:
                result.finish_reason = finish
                finished = True
    result.text = "".join(pieces)
    if not finished:
        result.error = "incomplete_stream"


def _logprob_tokens(logprobs: Any) -> int | None:
    """How many tokens a chunk carried, when its logprobs list them (chat: `content`, completions:
    `tokens`); None when it does not say."""
    if not isinstance(logprobs, dict):
        return None
    for key in ("content", "tokens"):
        items = logprobs.get(key)
        if isinstance(items, list) and items:
            return len(items)
    return None
