"""Property-based fuzzing of a real tgi-launch from its own /openapi.json (schemathesis + hypothesis).

Every documented operation gets bodies that fit its schema (positive) and bodies that break it (negative),
sent over real HTTP. Whatever comes in: never a 5xx; every 4xx is JSON `{"error", "error_type"}`; a 200 stream
carries no error event; and answers conform to the document (status codes, content types, JSON schemas).
On the OpenAI routes the document's verdict is the server's: a body it refuses is a 422 `validation`, a body
it allows is answered 200 unless refused for a reason it states in words (tests/request_fuzz.py). The same
routes also get every documented way to break the bodies of tests/request_fuzz.BODIES, over HTTP (in process,
tests/router/test_openai_fuzz.py checks the messages too, and against OpenAI's own request types).
Generation lengths are kept small so that the whole module stays around a minute on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode, Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.openapi import build_openapi
from router.server import VERSION
from tests.e2e.server import LaunchedServer, launch
from tests.request_fuzz import BODIES, OPENAI_ROUTES, allowed_refusal, bound_lengths, doc_accepts, iter_mutated

MAX_INPUT, MAX_TOTAL = 64, 128
# Accepted generation lengths are lowered to this and absent ones set to it, to bound the run time (the
# "no max_new_tokens: all the room left" rule is tested in test_generate.py; here it would cost ~MAX_TOTAL
# tokens a request).
MAX_NEW = 2
LENGTH_KEYS = ("max_new_tokens", "max_tokens", "max_completion_tokens")
OPERATIONS = sorted((method.upper(), path) for path, item in build_openapi("", "")["paths"].items() for method in item)
GENERATING = {path for method, path in OPERATIONS if method == "POST" and path != "/tokenize"}
EXAMPLES = {"POST": 30, "GET": 5}


@pytest.fixture(scope="module")
def fuzz_server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    s = launch(tiny_llama, "--max-input-tokens", str(MAX_INPUT), "--max-total-tokens", str(MAX_TOTAL),
               "--max-concurrent-requests", "8")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LaunchedServer) -> Any:
    served = requests.get(fuzz_server.url + "/openapi.json", timeout=10)
    assert served.status_code == 200, "the router does not serve /openapi.json (router.openapi not wired in?)"
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


def _bound_lengths(body: Any) -> None:
    """Lower accepted generation lengths to MAX_NEW and fill absent ones; lengths that validation refuses
    (0, negative, more than MAX_TOTAL, wrong types) stay as fuzzed."""
    if not isinstance(body, dict):
        return
    if "inputs" in body and body.get("parameters") is None:
        body["parameters"] = {}
    target = body["parameters"] if "inputs" in body else body
    if not isinstance(target, dict):
        return
    present = [key for key in LENGTH_KEYS if key in target]
    for key in present:
        value = target[key]
        if value is None or isinstance(value, int) and not isinstance(value, bool) and MAX_NEW < value <= MAX_TOTAL:
            target[key] = MAX_NEW
    if not present:
        target["max_new_tokens" if "inputs" in body else "max_tokens"] = MAX_NEW


def _describe(response: Response) -> str:
    sent = response.request
    body = sent.body.decode(errors="replace") if isinstance(sent.body, bytes) else sent.body
    return (f"{sent.method} {sent.url}\nrequest headers: {dict(sent.headers)}\nrequest body: {body}\n"
            f"-> {response.status_code} {_content_type(response)}: {response.content[:2000]!r}")


def _content_type(response: Response) -> str:
    return (response.headers.get("content-type") or [""])[0]


def _check_sse(text: str, describe: str) -> None:
    events = [block for block in text.split("\n\n") if block.strip()]
    data = [line.removeprefix("data:").strip() for block in events for line in block.split("\n")
            if line.startswith("data:")]
    assert data, describe
    for payload in data:
        if payload == "[DONE]":
            continue
        event = json.loads(payload)
        assert "error" not in event, f"error event in a 200 stream\n{describe}"


def _check(case: Any, response: Response) -> None:
    """The properties every answer has, whatever was sent."""
    describe = _describe(response)
    assert response.status_code < 500, f"server error\n{describe}"
    content_type = _content_type(response)
    if 400 <= response.status_code < 500:
        assert content_type.startswith("application/json"), describe
        body = json.loads(response.content)
        assert isinstance(body, dict), describe
        assert isinstance(body.get("error"), str) and body["error"], describe
        assert isinstance(body.get("error_type"), str) and body["error_type"], describe
    elif response.status_code == 200 and content_type.startswith("text/event-stream"):
        _check_sse(response.content.decode(), describe)
    if case.path in OPENAI_ROUTES and str(case.method).upper() == "POST":
        _check_verdict(case.path, _sent_json(response.request.body), response.status_code, response.content,
                       describe)
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                             response_schema_conformance])


def _sent_json(body: bytes | str | None) -> object:
    """The JSON value sent, or None for no body or one that is no JSON (no documented body either way)."""
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _check_verdict(path: str, sent: object, status: int, content: bytes, describe: str) -> None:
    """An OpenAI route answers as its documented request schema says: 422 `validation` for a body it refuses,
    200 for a body it allows unless refused for a reason the document states in words."""
    error = json.loads(content) if status == 422 else None
    if not doc_accepts(path, sent):
        assert status == 422 and error["error_type"] == "validation", f"a body the document refuses\n{describe}"
    elif status != 200:
        assert status == 422 and error["error_type"] == "validation" and allowed_refusal(error["error"]), (
            f"a body the document allows\n{describe}")


def test_served_document_and_docs(fuzz_server: LaunchedServer, tiny_llama: Path) -> None:
    served = requests.get(fuzz_server.url + "/openapi.json", timeout=10)
    assert served.status_code == 200, "the router does not serve /openapi.json (router.openapi not wired in?)"
    assert served.json() == json.loads(json.dumps(build_openapi(VERSION, str(tiny_llama))))
    docs = requests.get(fuzz_server.url + "/docs", timeout=10)
    assert docs.status_code == 200 and docs.headers["Content-Type"].startswith("text/html")
    assert "SwaggerUIBundle" in docs.text
    assert requests.get(fuzz_server.url + "/docs/static/swagger-ui-bundle.js", timeout=10).status_code == 200


POST_PATHS = [path for method, path in OPERATIONS if method == "POST"]
UNREADABLE = {"not-utf8": b"\x80", "bad-utf8-string": b'{"inputs": "\xff"}', "deeply-nested": b"[" * 100_000}


@pytest.mark.parametrize("body", UNREADABLE.values(), ids=UNREADABLE.keys())
@pytest.mark.parametrize("path", POST_PATHS)
def test_unreadable_bodies_are_422_json(fuzz_server: LaunchedServer, path: str, body: bytes) -> None:
    """The fuzzer's first find, pinned: bodies that json.loads cannot even decode (UnicodeDecodeError,
    RecursionError) are client errors like any malformed JSON."""
    response = requests.post(fuzz_server.url + path, data=body, headers={"Content-Type": "application/json"},
                             timeout=30)
    assert response.status_code == 422, (path, response.status_code, response.text[:200])
    assert response.json()["error_type"] == "validation"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", sorted(OPENAI_ROUTES))
def test_openai_bodies_and_every_way_to_break_them(fuzz_server: LaunchedServer, path: str) -> None:
    """Bodies that use every documented field are accepted; each documented way to break one is a 422 JSON
    `validation` error (issue 14: a `tools` entry without `function` was answered 200)."""
    url = fuzz_server.url + path
    failures, count = [], 0
    with requests.Session() as session:
        for body in BODIES[path]:
            sent = {**body}
            bound_lengths(sent, MAX_NEW)
            response = session.post(url, json=sent, timeout=60)
            describe = f"POST {path} {json.dumps(sent)[:300]} -> {response.status_code} {response.text[:300]}"
            assert response.status_code < 500, describe
            if response.headers.get("Content-Type", "").startswith("text/event-stream"):
                _check_sse(response.text, describe)
            _check_verdict(path, sent, response.status_code, response.content, describe)
        for _, mutation, broken in iter_mutated(path):
            count += 1
            response = session.post(url, json=broken, timeout=60)
            error = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
            if response.status_code != 422 or error.get("error_type") != "validation" or not error.get("error"):
                failures.append(f"{mutation}: {response.status_code} {response.text[:200]}")
    assert count > 300
    assert not failures, f"{len(failures)} of {count} broken bodies:\n" + "\n".join(failures[:40])


# GET routes take no input, so there is nothing to break in them (negative mode).
FUZZ = [(method, path, mode) for method, path in OPERATIONS
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if method == "POST" or mode is GenerationMode.POSITIVE]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("method", "path", "mode"), FUZZ, ids=[f"{m} {p} {mode}" for m, p, mode in FUZZ])
def test_fuzz_operation(api_schema: Any, fuzz_server: LaunchedServer, method: str, path: str,
                        mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    session = requests.Session()

    @settings(max_examples=EXAMPLES[method], deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if path in GENERATING:
            _bound_lengths(case.body)
        response = case.call(base_url=fuzz_server.url, session=session, timeout=60)
        _check(case, response)

    try:
        run()
    finally:
        session.close()
