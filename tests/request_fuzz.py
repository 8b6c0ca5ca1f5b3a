"""Request bodies for the OpenAI routes, derived from the OpenAPI document the server publishes.

- `Doc`: a document of JSON schemas (our OpenAPI components, or the `$defs` of OpenAI's own request types) and
  a validator for any schema in it. JSON integers are integers without a fraction, as in serde and in the
  server's strict parsing: `1.0` is a number, not an integer.
- `BODIES`: hand-written bodies per route that between them use every documented field and every alternative
  of every field (`test_openai_fuzz` checks that they do, so a new field needs a body here).
- `mutations`: every way to break a body at every documented place in it: a required key removed, or a value
  put in that the document refuses (another JSON type, past a bound, an unknown `type`).
- `valid_bodies`: a hypothesis strategy for any body the document allows.
- `allowed_refusal`: the only reasons a body the document allows may still be refused (limits set by flags,
  features documented as not supported yet, rules between fields that the descriptions state); anything
  else is drift between the document and the server.

Used in process by tests/router/test_openai_fuzz.py and over HTTP by tests/e2e/test_openapi.py.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from router.openapi import build_openapi

SPEC = build_openapi("fuzz", "fuzz-model")
COMPONENTS = "#/components/schemas/"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# Each OpenAI route's request body schema, as the document names it.
OPENAI_ROUTES: dict[str, str] = {
    path: item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].removeprefix(COMPONENTS)
    for path, item in SPEC["paths"].items() if path.startswith("/v1/") and "post" in item
}


def _is_integer(checker: Any, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


class Doc:
    """A JSON document that holds schemas; `#/...` references inside it resolve against it."""

    def __init__(self, root: dict[str, Any], uri: str) -> None:
        self.root = root
        self.uri = uri
        self.registry: Registry = Registry().with_resource(
            uri, Resource.from_contents(root, default_specification=DRAFT202012))
        self._validators: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.refused: dict[int, list[object]] = {}  # _refused_values, per schema

    def deref(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def validator(self, schema: dict[str, Any]) -> Any:
        # schemas are parts of the (unchanging) document, so their identity is a fine cache key
        cached = self._validators.get(id(schema))
        if cached is None:
            rebased = json.loads(json.dumps(schema).replace('"#/', f'"{self.uri}#/'))
            cached = self._validators[id(schema)] = (_Validator(rebased, registry=self.registry), schema)
        return cached[0]

    def accepts(self, schema: dict[str, Any], value: object) -> bool:
        return bool(self.validator(schema).is_valid(value))

    def first_error(self, schema: dict[str, Any], value: object) -> str | None:
        error = next(iter(self.validator(schema).iter_errors(value)), None)
        return None if error is None else f"{'.'.join(map(str, error.absolute_path))}: {error.message[:200]}"


DOC = Doc(SPEC, "urn:tgi-py-openapi")


def request_schema(path: str) -> dict[str, Any]:
    return SPEC["components"]["schemas"][OPENAI_ROUTES[path]]


def doc_accepts(path: str, body: object) -> bool:
    """Whether the published document allows `body` on the OpenAI route `path`."""
    return DOC.accepts(request_schema(path), body)


# ---- bodies that use every documented field ------------------------------------------------------------

TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city", "strict": False,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
USER = [{"role": "user", "content": "Hello"}]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}

BODIES: dict[str, list[dict[str, Any]]] = {
    CHAT: [
        {  # what the OpenAI SDK sends, with every field
            "model": "tgi",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                {"role": "user", "content": "The weather in Paris?", "name": "ann"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
            ],
            "max_tokens": 2, "max_completion_tokens": 2, "temperature": 0.7, "top_p": 0.9, "seed": 1,
            "stop": ["\n\n"], "frequency_penalty": 0.1, "presence_penalty": 0.1, "ignore_eos": False, "n": 1,
            "stream": False, "stream_options": {"include_usage": True}, "logit_bias": {}, "user": "someone",
            "logprobs": True, "top_logprobs": 2, "response_format": {"type": "text"}, "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "tool_prompt": "Tools:",
        },
        {  # the other forms: a stop string, a tool_choice keyword, arguments as an object, streaming
            "messages": [*USER, {"role": "assistant", "tool_calls": [
                {**CALL, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}],
            "stop": "\n", "tools": [TOOL], "tool_choice": "auto", "logit_bias": [], "stream": True, "temperature": 0,
            "max_tokens": 2,
        },
        # TGI's shorthand (a tool's name), and huggingface_hub's named choice without `type`
        {"messages": USER, "tools": [TOOL], "tool_choice": "get_weather", "max_tokens": 2},
        {"messages": USER, "tools": [TOOL], "tool_choice": {"function": {"name": "get_weather"}}, "max_tokens": 2},
        # structured output in every form; tool calls one at a time
        {"messages": USER, "max_tokens": 2, "response_format": {"type": "json_object", "value": SCHEMA}},
        {"messages": USER, "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "description": "an answer", "schema": SCHEMA, "strict": True}}},
        {"messages": USER, "max_tokens": 2, "response_format": {"type": "json_schema", "value": {
            "name": "answer", "description": "an answer", "schema": SCHEMA, "strict": False}}},
        {"messages": USER, "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 2},
        {"messages": USER, "max_tokens": 2, "response_format": {"type": "json", "value": SCHEMA}},
        {"messages": USER, "max_tokens": 2, "response_format": {"type": "regex", "value": "[0-9]+"}},
        {"messages": USER, "max_tokens": 2, "logit_bias": {"50256": -100}},
        {"messages": USER, "max_tokens": 2, "logit_bias": [0.5]},
    ],
    COMPLETIONS: [
        {
            "model": "tgi", "prompt": "Hello", "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "seed": 1,
            "stop": ["\n"], "frequency_penalty": 0.1, "presence_penalty": 0.1, "repetition_penalty": 1.1,
            "ignore_eos": False, "n": 1, "stream": False, "stream_options": {"include_usage": True},
            "logit_bias": {}, "user": "someone", "suffix": None, "echo": True, "logprobs": 2,
        },
        {"prompt": ["Hello", "World"], "max_tokens": 2, "stop": "\n", "logprobs": True, "logit_bias": [],
         "stream": True},
        *({"prompt": "Hello", "max_tokens": 2, "response_format": form} for form in [
            {"type": "text"}, {"type": "json_object"}, {"type": "json_object", "value": SCHEMA},
            {"type": "json", "value": SCHEMA}, {"type": "regex", "value": "[0-9]+"},
            {"type": "json_schema", "json_schema": {"name": "a", "description": "b", "schema": SCHEMA, "strict": True}},
            {"type": "json_schema", "value": {"name": "a", "description": "b", "schema": SCHEMA, "strict": False}}]),
        # documented, and refused as not supported
        {"prompt": "Hello", "max_tokens": 2, "suffix": "!"},
        {"prompt": "Hello", "max_tokens": 2, "logit_bias": {"50256": -100}},
        {"prompt": "Hello", "max_tokens": 2, "logit_bias": [0.5]},
    ],
}


# ---- broken bodies ---------------------------------------------------------------------------------------

_MISSING = object()
# Values tried at every place; those that the place's schema allows are left out.
_WRONG: list[object] = [None, True, 0, -1, 2.5, "", "x", [], [None], [0], ["x"], {}, {"x": 1}]


@dataclass(frozen=True)
class Mutation:
    """One way to break a body: the key at `path` removed, or its value replaced."""

    path: tuple[str | int, ...]
    value: object = _MISSING
    optional: bool = False  # the key may be left out where it is

    @property
    def removes(self) -> bool:
        return self.value is _MISSING

    @property
    def field(self) -> str:
        return str(self.path[0])

    @property
    def site(self) -> str:
        """The place, list indexes as `*`: `messages.*.tool_calls.*.id`."""
        return ".".join("*" if isinstance(part, int) else part for part in self.path)

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(body)
        parent: Any = out
        for part in self.path[:-1]:
            parent = parent[part]
        if self.value is _MISSING:
            del parent[self.path[-1]]
        else:
            parent[self.path[-1]] = copy.deepcopy(self.value)
        return out

    def __str__(self) -> str:
        where = ".".join(map(str, self.path))
        return f"{where} removed" if self.value is _MISSING else f"{where} = {json.dumps(self.value)}"


def _branches(doc: Doc, schema: dict[str, Any]) -> list[dict[str, Any]]:
    schema = doc.deref(schema)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives and "properties" not in schema:
        return [leaf for branch in alternatives for leaf in _branches(doc, branch)]
    return [schema]


def _refused_values(doc: Doc, schema: dict[str, Any]) -> list[object]:
    """Values the schema refuses: other JSON types, and each bound overstepped."""
    if id(schema) in doc.refused:
        return doc.refused[id(schema)]
    tried = list(_WRONG)
    for branch in _branches(doc, schema):
        if "minimum" in branch:
            tried.append(branch["minimum"] - 1)
        if "maximum" in branch:
            tried.append(branch["maximum"] + 1)
        tried += [branch[key] for key in ("exclusiveMinimum", "exclusiveMaximum") if key in branch]
    seen: set[str] = set()
    out = []
    for value in tried:
        key = json.dumps(value)  # 0 and False are equal in Python, not in JSON
        if key not in seen and not doc.accepts(schema, value):
            seen.add(key)
            out.append(value)
    doc.refused[id(schema)] = out
    return out


@dataclass
class Coverage:
    """Which properties and which alternatives (`anyOf`/`oneOf` branches) of which schemas a walk went through."""

    seen: set[tuple[str, int, object]]

    def __init__(self) -> None:
        self.seen = set()


def _walk(doc: Doc, schema: dict[str, Any], value: object, path: tuple[str | int, ...], out: list[Mutation],
          coverage: Coverage) -> None:
    schema = doc.deref(schema)
    if "properties" in schema:
        if isinstance(value, dict):
            required = set(schema.get("required", []))
            for name, sub in schema["properties"].items():
                if name not in value:
                    continue
                coverage.seen.add(("property", id(schema), name))
                site = (*path, name)
                if name in required:
                    out.append(Mutation(site))
                out += [Mutation(site, wrong, name not in required) for wrong in _refused_values(doc, sub)]
                _walk(doc, sub, value[name], site, out, coverage)
        return
    if "items" in schema:
        if isinstance(value, list):
            refused = _refused_values(doc, schema["items"])
            for index, item in enumerate(value):
                out += [Mutation((*path, index), wrong) for wrong in refused]
                _walk(doc, schema["items"], item, (*path, index), out, coverage)
        return
    alternatives = schema.get("anyOf") or schema.get("oneOf") or []
    for index, branch in enumerate(alternatives):
        if doc.accepts(branch, value):
            coverage.seen.add(("branch", id(schema), index))
            _walk(doc, branch, value, path, out, coverage)
            return


def mutations(doc: Doc, schema: dict[str, Any], body: dict[str, Any], coverage: Coverage | None = None,
              checked: bool = True) -> list[Mutation]:
    """Every way to break `body` (valid for `schema`) at one place. `checked`: only those that break it for
    `schema` as a whole (nearly all do; an object-level rule can make the difference)."""
    out: list[Mutation] = []
    _walk(doc, schema, body, (), out, Coverage() if coverage is None else coverage)
    return [m for m in out if not doc.accepts(schema, m.apply(body))] if checked else out


def documented_places(doc: Doc, schema: dict[str, Any], label: str) -> dict[tuple[str, int, object], str]:
    """Every property and every non-null alternative reachable from `schema`, keyed like `Coverage.seen`."""
    places: dict[tuple[str, int, object], str] = {}
    visiting: set[int] = set()

    def visit(node: dict[str, Any], label: str) -> None:
        if "$ref" in node:
            label = node["$ref"].rsplit("/", 1)[-1]
        node = doc.deref(node)
        if id(node) in visiting:
            return
        visiting.add(id(node))
        if "properties" in node:
            for name, sub in node["properties"].items():
                places[("property", id(node), name)] = f"{label}.{name}"
                visit(sub, f"{label}.{name}")
        elif "items" in node:
            visit(node["items"], f"{label}[]")
        else:
            for index, branch in enumerate(node.get("anyOf") or node.get("oneOf") or []):
                if doc.deref(branch).get("type") != "null":
                    places[("branch", id(node), index)] = f"{label} as {json.dumps(branch)[:80]}"
                    visit(branch, label)
        visiting.discard(id(node))

    visit(schema, label)
    return places


# ---- valid bodies ----------------------------------------------------------------------------------------

_text = st.text(max_size=12)
_any_json: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


def from_schema(doc: Doc, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that `schema` allows (for the keywords our request models use)."""
    schema = doc.deref(schema)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives and "properties" not in schema:
        return st.one_of([from_schema(doc, branch) for branch in alternatives])
    kind = schema.get("type")
    strategy: st.SearchStrategy[Any]
    if "properties" in schema:
        required = set(schema.get("required", []))
        properties = {name: from_schema(doc, sub) for name, sub in schema["properties"].items()}
        strategy = st.fixed_dictionaries({k: v for k, v in properties.items() if k in required},
                                         optional={k: v for k, v in properties.items() if k not in required})
        # object-level rules (ChatMessage: content or tool_calls) are kept by filtering
        return strategy.filter(lambda value: doc.accepts(schema, value)) if alternatives else strategy
    if kind == "object":
        extra = schema.get("additionalProperties", True)
        return st.dictionaries(_text, _any_json if extra is True else from_schema(doc, extra), max_size=3)
    if kind == "array":
        least = schema.get("minItems", 0)
        return st.lists(from_schema(doc, schema.get("items", {})), min_size=least, max_size=least + 3)
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=20)
    if kind == "integer":
        low = schema.get("minimum", schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else None)
        high = schema.get("maximum", schema["exclusiveMaximum"] - 1 if "exclusiveMaximum" in schema else None)
        return st.integers(low, high)
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        floats = st.floats(low, high, allow_nan=False, allow_infinity=False,
                           exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema)
        integers = st.integers(-(10**6) if low is None else int(low) + 1, 10**6 if high is None else int(high))
        return floats | integers.filter(lambda value: doc.accepts(schema, value))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _any_json


def valid_bodies(path: str) -> st.SearchStrategy[dict[str, Any]]:
    schema = request_schema(path)
    return from_schema(DOC, schema).filter(lambda body: DOC.accepts(schema, body))


LENGTH_KEYS = ("max_tokens", "max_completion_tokens")


def bound_lengths(body: object, most: int) -> None:
    """Lower generation lengths the document allows to `most`, and set one when none is given; lengths it
    refuses stay as they are."""
    if not isinstance(body, dict):
        return
    given = [key for key in LENGTH_KEYS if key in body]
    for key in given:
        value = body[key]
        if value is None or isinstance(value, int) and not isinstance(value, bool) and most < value < 2**32:
            body[key] = most
    if not given:
        body["max_tokens"] = most


# ---- what a refusal may say ------------------------------------------------------------------------------

# A body the document allows is accepted, except for these reasons, each stated in the document in words.
ALLOWED_REFUSALS: dict[str, str] = {
    # limits set by flags: "at most --max-stop-sequences" and the like; /info has the values
    r"`inputs` must have less than \d+ tokens": "--max-input-tokens",
    r"`inputs` tokens \+ `max_new_tokens` must be <= \d+": "--max-total-tokens",
    r"`stop` supports up to \d+ stop sequences": "--max-stop-sequences",
    r"`top_n_tokens` must be >= 0 and <= \d+": "--max-top-n-tokens",
    r"Number of prompts exceeds the maximum allowed batch size of \d+": "--max-client-batch-size",
    # grammars the engine refuses, as response_format's and tools' descriptions say
    r"invalid grammar: ": "response_format",
    r"grammar is too (large|complex)": "response_format",
    r"grammar `value` is not a JSON schema": "response_format",
    r"`response_format` and `tools` cannot be used together": "response_format",
    # fields documented as "not supported by this server yet" (UNSUPPORTED)
    r"`logit_bias`: not supported by this server yet": "logit_bias",
    r"`suffix`: Suffix is not supported": "suffix",
    # rules between fields, stated in tool_choice's description
    r"`tool_choice`: .* is not 'auto', 'none', 'required' or the name of one of `tools`": "tool_choice",
    r"`tool_choice`: 'required' needs `tools`": "tool_choice",
    # what JSON Schema cannot say: text that is no UTF-8, a prompt that the tokenizer turns into no tokens
    r".*string is not valid UTF-8 \(lone surrogate\)": "UTF-8",
    r"`inputs` cannot be empty \(it has no tokens\)": "tokenizer",
}
# The fields whose refusals above are documented as "not supported", per request schema.
UNSUPPORTED = {"ChatCompletionRequest": ["logit_bias"],
               "CompletionRequest": ["logit_bias", "suffix"]}


def allowed_refusal(message: str) -> str | None:
    """Why a body the document allows may be refused with `message`; None: it may not."""
    return next((why for pattern, why in ALLOWED_REFUSALS.items() if re.match(pattern, message)), None)


# Our fields that the validator reports under their native name.
NATIVE_NAMES = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
                "top_logprobs": "top_n_tokens", "logprobs": "top_n_tokens", "response_format": "grammar",
                "prompt": "inputs"}


def names_field(message: str, field: str) -> bool:
    """Whether an error message starts by naming `field` (or its native name), like "`tools.0.function`: ..."."""
    names = [field] + ([NATIVE_NAMES[field]] if field in NATIVE_NAMES else [])
    # several errors are joined with "; " (router.validation._format_pydantic_error)
    return any(part.startswith((f"`{name}`", f"`{name}.")) for part in message.split("; ") for name in names)


def iter_mutated(path: str) -> Iterator[tuple[dict[str, Any], Mutation, dict[str, Any]]]:
    """(base body, mutation, broken body) for every documented way to break every body of BODIES[path]."""
    schema = request_schema(path)
    for body in BODIES[path]:
        for mutation in mutations(DOC, schema, body):
            yield body, mutation, mutation.apply(body)
