"""The OpenAPI document (router.openapi): valid OpenAPI 3.1, complete, and served at /openapi.json and /docs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from router import openapi, openapi_components, openapi_docs
from router.batcher import Batcher, SchedulerConfig
from router.config import RouterConfig
from router.middleware import OPEN_PATHS
from router.openai_routes import OpenAIRoutes
from router.openapi import build_openapi
from router.openapi_docs import add_openapi_routes
from router.playground import ROUTES as PLAYGROUND_ROUTES
from router.server import VERSION, Router
from router.validation import Validator
from tests.router.fake_shard import FakeShard

SPEC = build_openapi(VERSION, "tiny-model")
# Served for /docs only, and the browser playground's page (GET / for a browser): not API routes of their own.
ASSET_ROUTES = {("GET", "/docs/static/{name}"), *PLAYGROUND_ROUTES}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(pointer: str) -> Any:
    node: Any = SPEC
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    # The whole document is the resource, so `#/components/schemas/...` refs resolve as they do for clients.
    registry = Registry().with_resource("urn:spec", Resource.from_contents(SPEC, default_specification=DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": f"urn:spec#/components/schemas/{schema_name}"},
                                           registry=registry)


def _operations(spec: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item}


def test_document_is_valid_openapi_31() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    validate(SPEC)
    json.dumps(SPEC, allow_nan=False)  # plain JSON, nothing Python-only


def test_every_ref_resolves() -> None:
    # openapi-spec-validator does not follow $refs inside schemas; a dangling one would break clients.
    refs = _refs(SPEC)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert isinstance(_resolve(ref), dict), ref


def test_every_component_schema_is_valid_json_schema() -> None:
    for name, schema in SPEC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name


def _media_types(node: Any) -> list[dict]:
    if isinstance(node, dict):
        found = [node] if "schema" in node and "example" in node else []
        return found + [m for value in node.values() for m in _media_types(value)]
    if isinstance(node, list):
        return [m for value in node for m in _media_types(value)]
    return []


def test_every_example_fits_its_schema() -> None:
    registry = Registry().with_resource("urn:spec", Resource.from_contents(SPEC, default_specification=DRAFT202012))
    examples = _media_types(SPEC["paths"])
    assert len(examples) > 20
    for media in examples:
        schema = json.loads(json.dumps(media["schema"]).replace('"#/components', '"urn:spec#/components'))
        jsonschema.Draft202012Validator(schema, registry=registry).validate(media["example"])
    for name, model in openapi_components.REQUEST_MODELS.items():
        model.model_validate(openapi.REQUEST_EXAMPLES[name])  # the server takes them too


def test_request_bodies_come_from_the_pydantic_models() -> None:
    schemas = SPEC["components"]["schemas"]
    for name, model in openapi_components.REQUEST_MODELS.items():
        assert set(schemas[name]["properties"]) == set(model.model_fields), name
    assert "max_new_tokens" in schemas["GenerateParameters"]["properties"]
    bodies = {("POST", path): item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
              for path, item in SPEC["paths"].items() if "post" in item}
    assert bodies == {
        ("POST", "/generate"): "#/components/schemas/GenerateRequest",
        ("POST", "/generate_stream"): "#/components/schemas/GenerateRequest",
        ("POST", "/"): "#/components/schemas/GenerateRequest",
        ("POST", "/tokenize"): "#/components/schemas/TokenizeRequest",
        ("POST", "/v1/chat/completions"): "#/components/schemas/ChatCompletionRequest",
        ("POST", "/v1/completions"): "#/components/schemas/CompletionRequest",
    }


@pytest.mark.parametrize(("schema", "body"), [
    ("GenerateRequest", {"inputs": "hi", "parameters": {"max_new_tokens": 5, "stop": ["x"], "details": True}}),
    ("GenerateRequest", {"inputs": "hi", "stream": True, "parameters": {"grammar": {"type": "regex", "value": "a"}}}),
    ("TokenizeRequest", {"inputs": "hi", "add_special_tokens": False}),
    ("ChatCompletionRequest", {"messages": [{"role": "user", "content": "hi"}], "stop": "x", "max_tokens": 3}),
    ("ChatCompletionRequest", {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
                               "stream": True, "stream_options": {"include_usage": True}}),
    ("CompletionRequest", {"prompt": ["a", "b"], "logprobs": True, "stop": ["x", "y"]}),
    ("CompletionRequest", {"prompt": "a", "logprobs": 2, "stop": "x"}),
])
def test_documented_request_schemas_accept_what_the_server_accepts(schema: str, body: dict) -> None:
    _validator(schema).validate(body)
    # ... and the server's own parser takes it too (so the document shows no body the server refuses)
    openapi_components.REQUEST_MODELS[schema].model_validate(body)


@pytest.mark.parametrize(("schema", "body"), [
    ("GenerateRequest", {"parameters": {}}),
    ("GenerateRequest", {"inputs": 3}),
    ("ChatCompletionRequest", {"model": "m"}),
    ("CompletionRequest", {"prompt": 3}),
])
def test_documented_request_schemas_refuse_bad_bodies(schema: str, body: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _validator(schema).validate(body)


@pytest.mark.parametrize(("schema", "body"), [
    ("GenerateResponse", {"generated_text": "x"}),
    ("GenerateResponse", {"generated_text": "x", "details": {
        "finish_reason": "length", "generated_tokens": 1, "seed": None,
        "prefill": [{"id": 1, "text": "a", "logprob": None}],
        "tokens": [{"id": 2, "text": "b", "logprob": -0.5, "special": False}]}}),
    ("StreamResponse", {"index": 1, "token": {"id": 2, "text": "b", "logprob": -0.5, "special": False},
                        "generated_text": None, "details": None}),
    ("ErrorResponse", {"error": "Model is overloaded", "error_type": "overloaded"}),
    ("TokenizeResponse", [{"id": 1, "text": "a", "start": 0, "stop": 1}]),
    ("Liveness", {"status": "alive"}),
])
def test_response_schemas_describe_the_wire(schema: str, body: Any) -> None:
    _validator(schema).validate(body)


def test_response_schemas_come_from_the_response_models() -> None:
    schemas = SPEC["components"]["schemas"]
    for name, model in openapi_components.RESPONSE_MODELS.items():
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        generated.pop("$defs", None)
        assert schemas[name] == generated, name
    # A field left out when empty is optional and never null; every other field is always sent.
    assert schemas["StreamResponse"]["required"] == ["index", "token", "generated_text", "details"]
    assert schemas["StreamResponse"]["properties"]["top_tokens"]["type"] == "array"
    assert "default" not in schemas["StreamResponse"]["properties"]["top_tokens"]
    assert schemas["GenerateResponse"]["required"] == ["generated_text"]
    assert schemas["Details"]["required"] == ["finish_reason", "generated_tokens", "seed", "prefill", "tokens"]
    assert schemas["Details"]["properties"]["finish_reason"]["enum"] == ["length", "eos_token", "stop_sequence"]
    assert "usage" not in schemas["ChatCompletionChunk"]["required"]
    assert "usage" in schemas["ChatCompletion"]["required"]
    # a chunk of a tool call has no content; one of text always has it
    assert "required" not in schemas["ChatDelta"]
    assert schemas["AssistantMessage"]["required"] == ["role", "content"]


def test_the_native_bodies_the_server_builds_fit_their_schemas() -> None:
    from router.responses import generate_response, stream_event, to_json
    from router.stream import Finished, Token, TokenEvent
    from router.types import SamplingParameters, StoppingParameters, ValidRequest

    valid = ValidRequest(inputs="x", input_ids=(1,), sampling=SamplingParameters(),
                         stopping=StoppingParameters(max_new_tokens=2), details=True, top_n_tokens=1)
    finished = Finished("ab", "eos_token", 2, None)
    top = (Token(9, "z", -3.0, False),)
    events = [TokenEvent(1, Token(3, "a", -0.5, False), top, prefill=[Token(1, "x", None, False)]),
              TokenEvent(2, Token(4, "b", None, True), top, finished=finished)]
    _validator("GenerateResponse").validate(json.loads(to_json(generate_response(valid, events, finished))))
    for event in events:
        _validator("StreamResponse").validate(json.loads(to_json(stream_event(valid, event))))


def _bound_cases() -> list[tuple[str, str, Any, bool]]:
    """(schema, field, value, accepted) just inside and just outside every bound that router.openapi adds
    (the pydantic types' own wire-width maxima are the models' business)."""
    cases = []
    added = [(schema, field, bounds) for schema, fields in openapi_components.RANGES.items()
             for field, bounds in fields.items()]
    for schema_name, field, bounds in added:
        prop = SPEC["components"]["schemas"][schema_name]["properties"][field]
        kind = next((b.get("type") for b in prop.get("anyOf", [prop]) if b.get("type") in ("integer", "number")), None)
        step = 1 if kind == "integer" else 0.5
        low, high = bounds.get("exclusiveMinimum"), bounds.get("exclusiveMaximum")
        if "minimum" in bounds:
            cases += [(schema_name, field, bounds["minimum"], True),
                      (schema_name, field, bounds["minimum"] - step, False)]
        if "maximum" in bounds:
            cases += [(schema_name, field, bounds["maximum"], True),
                      (schema_name, field, bounds["maximum"] + step, False)]
        if low is not None:
            inside = (low + high) / 2 if high is not None else low + step
            cases += [(schema_name, field, low, False), (schema_name, field, inside, True)]
        if high is not None:
            cases += [(schema_name, field, high, False)]
        if "minLength" in bounds:
            cases += [(schema_name, field, "", False), (schema_name, field, "x", True)]
        if "minItems" in bounds:
            item = {"role": "user", "content": "hi"} if field == "messages" else "hello"
            cases += [(schema_name, field, [], False), (schema_name, field, [item], True)]
    cases += [("CompletionRequest", "prompt", prompt, prompt == ["x"]) for prompt in ("", [], [""], ["x"])]
    cases += [("ChatCompletionRequest", "messages", [message], accepted) for message, accepted in [
        ({"role": "user", "content": "hi"}, True), ({"role": "user"}, False),
        ({"role": "user", "content": None}, False),
        ({"role": "user", "content": [{"type": "text", "text": "hi"}]}, True),
        ({"role": "user", "content": [{"type": "image", "text": "hi"}]}, False),
        ({"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                               "function": {"name": "f", "arguments": "{}"}}]}, True),
        ({"role": "assistant", "content": None, "tool_calls": []}, False),
    ]]
    return cases


def _documented(schema_name: str, field: str, value: Any) -> bool:
    """Whether the document's schema takes `field: value`."""
    try:
        _validator(schema_name).validate({"inputs": "x", field: value} if schema_name == "GenerateRequest" else
                                         {"messages": [{"role": "user", "content": "x"}], field: value}
                                         if schema_name == "ChatCompletionRequest" else
                                         {"prompt": "x", field: value} if schema_name == "CompletionRequest" else
                                         {field: value})
    except jsonschema.ValidationError:
        return False
    return True


def _server_accepts(validator: Validator, schema_name: str, field: str, value: Any) -> bool:
    """Whether the server's own parsing and validation take `field: value` (all else minimal and valid)."""
    from router.openai_schemas import ChatCompletionRequest, CompletionRequest
    from router.schemas import GenerateRequest
    from router.validation import ValidationError

    try:
        if schema_name == "GenerateParameters":
            requests = [GenerateRequest.model_validate({"inputs": "hello", "parameters": {field: value}})]
        elif schema_name == "GenerateRequest":
            requests = [GenerateRequest.model_validate({"inputs": "hello", field: value})]
        elif schema_name == "ChatCompletionRequest":
            chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], field: value})
            requests = [GenerateRequest(inputs="hello", parameters=chat.to_generate_parameters())]
        else:
            completion = CompletionRequest.model_validate({"prompt": "hello", field: value})
            requests = [GenerateRequest(inputs=p, parameters=completion.to_generate_parameters())
                        for p in completion.prompts(4)]
        for request in requests:
            validator.validate(request, stream=False)
    except (ValidationError, pydantic.ValidationError):
        return False
    return True


BOUND_CASES = _bound_cases()


@pytest.mark.parametrize(("schema", "field", "value", "accepted"), BOUND_CASES,
                         ids=[f"{s}.{f}={v!r}" for s, f, v, _ in BOUND_CASES])
def test_documented_bounds_are_the_servers(validator: Validator, schema: str, field: str, value: Any,
                                           accepted: bool) -> None:
    assert _server_accepts(validator, schema, field, value) is accepted
    assert _documented(schema, field, value) is accepted


def test_only_the_middlewares_open_paths_skip_the_api_key() -> None:
    unsecured = {path for path, item in SPEC["paths"].items() for op in item.values() if op.get("security") == []}
    assert unsecured == set(OPEN_PATHS) & set(SPEC["paths"])
    assert {"/health", "/live"} <= unsecured
    assert SPEC["security"] == [{"BearerAuth": []}]
    assert SPEC["components"]["securitySchemes"]["BearerAuth"] == {
        **SPEC["components"]["securitySchemes"]["BearerAuth"], "type": "http", "scheme": "bearer"}


def test_errors_are_documented_with_the_error_body() -> None:
    generate = SPEC["paths"]["/generate"]["post"]["responses"]
    for code in ("401", "413", "422", "424", "429", "503"):
        assert generate[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "Retry-After" in generate["429"]["headers"]
    for path in ("/generate_stream", "/"):
        assert "text/event-stream" in SPEC["paths"][path]["post"]["responses"]["200"]["content"]


# ---- the app, built like router/cli.py ------------------------------------------------------------------------


def _app(tokenizer_dir: Path, validator: Validator) -> web.Application:
    config = RouterConfig.parse(["--tokenizer-dir", str(tokenizer_dir), "--model-id", "tiny-model"])
    batcher = Batcher(FakeShard(), SchedulerConfig(max_batch_prefill_tokens=100, max_batch_total_tokens=1000,
                                                   block_size=16))
    router = Router(config, validator, batcher, FakeShard(), 1000)  # type: ignore[arg-type]
    app = router.app()
    OpenAIRoutes(router, None).add_to(app)
    add_openapi_routes(app, build_openapi(VERSION, config.model_id))
    return app


def _registered(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for resource in app.router.resources():
        for route in resource:
            if route.method != "HEAD":  # aiohttp adds HEAD to every GET
                routes.add((route.method, resource.canonical))
    return routes


async def test_every_served_route_is_documented_and_every_documented_route_served(
        tokenizer_dir: Path, validator: Validator) -> None:
    served = _registered(_app(tokenizer_dir, validator)) - ASSET_ROUTES
    documented = _operations(SPEC)
    assert served - documented == set(), "served but missing from the OpenAPI document"
    assert documented - served == set(), "documented but not served"


async def test_openapi_json_and_docs_are_served(tokenizer_dir: Path, validator: Validator) -> None:
    async with TestClient(TestServer(_app(tokenizer_dir, validator))) as client:
        response = await client.get("/openapi.json")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == json.loads(json.dumps(SPEC))

        response = await client.get("/docs")
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
        assert page.lstrip().lower().startswith("<!doctype html>")
        assert "SwaggerUIBundle" in page and 'url: "openapi.json"' in page
        assert "http://" not in page and "https://" not in page  # works offline: no CDN
        for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert f"docs/static/{name}" in page
            asset = await client.get(f"/docs/static/{name}")
            assert asset.status == 200, name
            assert len(await asset.read()) > 10_000
        assert (await client.get("/docs/static/swagger-ui-bundle.js")).content_type == "text/javascript"
        for name in ("index.html", "..%2F__init__.py", "swagger-initializer.js"):
            assert (await client.get(f"/docs/static/{name}")).status == 404, name


def test_docs_fall_back_to_a_plain_page_without_swagger_ui() -> None:
    page = openapi_docs.docs_page(SPEC, swagger_ui=False)
    assert "<script" not in page and "http" not in page
    for method, path in _operations(SPEC):
        assert f"<code>{method} {path}</code>" in page
    assert 'href="openapi.json"' in page


async def test_docs_without_swagger_ui_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openapi_docs, "_swagger_ui_dir", lambda: None)
    app = web.Application()
    add_openapi_routes(app, SPEC)
    assert _registered(app) == {("GET", "/openapi.json"), ("GET", "/docs")}
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/docs")
        assert response.status == 200 and response.content_type == "text/html"
        assert "<code>POST /generate</code>" in await response.text()
