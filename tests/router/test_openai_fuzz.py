"""Schema fuzzing of the OpenAI routes' full request models, in process: the published OpenAPI document, the
parser (router.openai_schemas) and the validator must agree about every body.

- Every body the document allows is accepted (answered 200), or refused for a reason the document states in
  words (tests/request_fuzz.ALLOWED_REFUSALS: limits set by flags, features not supported yet, rules
  between fields).
- Every body the document refuses is a 422 `validation` whose message names the field, never an exception
  (a 500) and never a 200: every documented way to break every hand-written body (a required key removed,
  a value of another type or past a bound, at every nested place), and the same on random valid bodies.
- What OpenAI's own request types (the `openai` SDK) refuse, we refuse too, except where we are deliberately
  more lenient (LENIENT, each with its reason). This is what finds a field the models leave too loose,
  such as a `tools` entry without `function`, which a document derived from those models would allow.

A request goes through what the routes do before admission (router.openai_routes): parse, render the chat
template, validate each native request. tests/e2e/test_openapi.py sends the same bodies to a real server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import tokenizers
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from router.chat_template import ChatTemplate, TemplateError
from router.openai_schemas import (
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
)
from router.schemas import GenerateRequest
from router.validation import ValidationError, ValidationLimits, Validator
from tests.request_fuzz import (
    BODIES,
    CHAT,
    COMPLETIONS,
    DOC,
    OPENAI_ROUTES,
    SPEC,
    UNSUPPORTED,
    Coverage,
    Doc,
    Mutation,
    allowed_refusal,
    bound_lengths,
    doc_accepts,
    documented_places,
    iter_mutated,
    mutations,
    names_field,
    request_schema,
    valid_bodies,
)

# Limits that a documented body does not reach by accident (the flag-set limits are allowed refusals anyway).
LIMITS = ValidationLimits(max_input_tokens=100_000, max_total_tokens=100_064, max_stop_sequences=1_000,
                          max_top_n_tokens=MAX_TOP_LOGPROBS)
MAX_NEW = 16
MAX_CLIENT_BATCH_SIZE = 1_000
# Reads every part of a message and the tools, like tool-calling templates do (tojson included).
TEMPLATE = (
    "{% if tools %}{{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m['name'] is defined %} {{ m['name'] }}{% endif %}\n"
    "{{ m['content'] }}{% for call in m['tool_calls'] or [] %}{{ call['id'] }} {{ call['function']['name'] }}"
    "{{ call['function']['arguments'] if call['function']['arguments'] is string "
    "else call['function']['arguments'] | tojson }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROUTES = sorted(OPENAI_ROUTES)
MODELS = {CHAT: ChatCompletionRequest, COMPLETIONS: CompletionRequest}


@dataclass(frozen=True)
class Answer:
    status: int
    error: str | None = None
    error_type: str | None = None


@pytest.fixture(scope="module")
def answer(tokenizer: tokenizers.Tokenizer) -> Any:
    validator = Validator(tokenizer, LIMITS)
    template = ChatTemplate({"default": TEMPLATE})

    def run(path: str, body: object) -> Answer:
        """What the route answers before admission; any exception but these two would be a 500."""
        raw = json.dumps(body)
        try:
            if path == CHAT:
                chat = parse_chat_request(raw)
                prompt = template.render(chat.chat_messages(), add_generation_prompt=True, tools=chat.tools)
                natives = [GenerateRequest(inputs=prompt, parameters=chat.to_generate_parameters())]
                stream, special = chat.stream, False
            else:
                completion = parse_completion_request(raw)
                parameters = completion.to_generate_parameters()
                natives = [GenerateRequest(inputs=prompt, parameters=parameters)
                           for prompt in completion.prompts(MAX_CLIENT_BATCH_SIZE)]
                stream, special = completion.stream, True
            for native in natives:
                validator.validate(native, stream=stream, add_special_tokens=special)
        except ValidationError as err:
            return Answer(422, err.message, "validation")
        except TemplateError as err:
            return Answer(422, err.message, "template_error")
        return Answer(200)

    return run


def _accepted_or_allowed(body: object, got: Answer) -> str | None:
    """None when `got` is right for a body the document allows, else what is wrong."""
    if got.status == 200 or got.error_type == "validation" and got.error and allowed_refusal(got.error):
        return None
    return f"documented body refused: {got}\n  body: {json.dumps(body)[:500]}"


def _masked(field: str, base: Answer) -> bool:
    """Whether breaking `field` of a body that is refused already (`base`) cannot show: the refusal comes first,
    unless it is about that field."""
    return base.status != 200 and not names_field(base.error or "", field)


def _refused(got: Answer, field: str, base: Answer | None = None) -> str | None:
    """None when `got` is right for a body the document refuses (broken at `field`), else what is wrong."""
    if got.status != 422 or got.error_type != "validation" or not got.error:
        return f"broken body answered {got}"
    if not names_field(got.error, field):
        return f"the message does not name `{field}`: {got.error!r}"
    if base is not None and got.error == base.error:
        return f"refused only for what its unbroken body is refused for: {got.error!r}"
    return None


# ---- the hand-written bodies and every way to break them ---------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
def test_bodies_fit_the_document_and_are_accepted(path: str, answer: Any) -> None:
    schema = request_schema(path)
    accepted = 0
    for body in BODIES[path]:
        assert DOC.accepts(schema, body), DOC.first_error(schema, body)
        got = answer(path, body)
        assert _accepted_or_allowed(body, got) is None, got
        accepted += got.status == 200
    assert accepted >= 2


@pytest.mark.parametrize("path", ROUTES)
def test_bodies_use_every_documented_field_and_form(path: str) -> None:
    """So that the mutations below reach every place of the document: a new field or a new form of one needs
    a body in tests/request_fuzz.BODIES."""
    schema = request_schema(path)
    coverage = Coverage()
    for body in BODIES[path]:
        mutations(DOC, schema, body, coverage)
    places = documented_places(DOC, schema, OPENAI_ROUTES[path])
    assert sorted(label for key, label in places.items() if key not in coverage.seen) == []
    # ... and the document has every field of the model, nested models included
    assert set(schema["properties"]) == set(MODELS[path].model_fields)


@pytest.mark.parametrize("path", ROUTES)
def test_every_documented_way_to_break_a_body_is_a_422(path: str, answer: Any) -> None:
    failures, count = [], 0
    bases: dict[str, Answer] = {}
    for base, mutation, broken in iter_mutated(path):
        count += 1
        key = json.dumps(base)
        if key not in bases:
            bases[key] = answer(path, base)
        base_answer = bases[key]
        if _masked(mutation.field, base_answer):
            continue
        problem = _refused(answer(path, broken), mutation.field,
                           base_answer if base_answer.status != 200 else None)
        if problem:
            failures.append(f"{mutation}: {problem}")
    assert count > 300
    assert not failures, f"{len(failures)} of {count} broken bodies:\n" + "\n".join(failures[:40])


def test_the_reported_gap_is_among_the_mutations() -> None:
    """Issue 14: a `tools` entry without `function` was answered 200."""
    found = {str(m) for _, m, _ in iter_mutated(CHAT)}
    assert {"tools.0.function removed", "tools.0.type = \"x\"", "tool_choice.function removed",
            "tools.0.function.name removed", "messages.2.tool_calls.0.function removed"} <= found


@pytest.mark.parametrize("schema_name", sorted(UNSUPPORTED))
def test_allowed_refusals_are_documented(schema_name: str) -> None:
    properties = SPEC["components"]["schemas"][schema_name]["properties"]
    for field in UNSUPPORTED[schema_name]:
        assert "not supported" in properties[field].get("description", ""), field
    if schema_name == "ChatCompletionRequest":
        description = properties["tool_choice"]["description"]
        assert "must be one of `tools`" in description and "'required' needs `tools`" in description


# ---- random bodies -------------------------------------------------------------------------------------

# No shrinking: on these large bodies it can take minutes; the failing example is printed as drawn.
FUZZ = settings(max_examples=40, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("path", ROUTES)
@FUZZ
@given(data=st.data())
def test_documented_bodies_are_accepted(path: str, answer: Any, data: st.DataObject) -> None:
    body = data.draw(valid_bodies(path), label="body")
    bound_lengths(body, MAX_NEW)
    problem = _accepted_or_allowed(body, answer(path, body))
    assert problem is None, problem


@pytest.mark.parametrize("path", ROUTES)
@FUZZ
@given(data=st.data())
def test_broken_documented_bodies_are_refused(path: str, answer: Any, data: st.DataObject) -> None:
    body = data.draw(valid_bodies(path), label="body")
    bound_lengths(body, MAX_NEW)
    broken_at = mutations(DOC, request_schema(path), body, checked=False)
    mutation = data.draw(st.sampled_from(broken_at), label="mutation")
    broken = mutation.apply(body)
    assume(not doc_accepts(path, broken))
    got, base = answer(path, broken), answer(path, body)
    assume(not _masked(mutation.field, base))
    problem = _refused(got, mutation.field, base if base.status != 200 else None)
    assert problem is None, f"{mutation}: {problem}\n  body: {json.dumps(body)[:500]}"


_anything: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@pytest.mark.parametrize("path", ROUTES)
@FUZZ
@given(data=st.data())
def test_the_document_and_the_server_agree_on_any_body(path: str, answer: Any, data: st.DataObject) -> None:
    """Each documented field valid or any JSON at all: the server's verdict is the document's."""
    properties = request_schema(path)["properties"]
    body: dict[str, Any] = {}
    for name in data.draw(st.lists(st.sampled_from(sorted(properties)), unique=True, max_size=8), label="fields"):
        valid = valid_bodies(path).map(lambda b, name=name: b.get(name)).filter(lambda v: v is not None)
        body[name] = data.draw(valid | _anything, label=name)
    if data.draw(st.booleans(), label="with the required fields"):
        body = {**data.draw(valid_bodies(path)), **body}
    bound_lengths(body, MAX_NEW)
    got = answer(path, body)
    if DOC.accepts(request_schema(path), body):
        problem = _accepted_or_allowed(body, got)
    elif got.status != 422 or got.error_type != "validation":
        problem = f"a body the document refuses ({DOC.first_error(request_schema(path), body)}) answered {got}"
    else:
        problem = None
    assert problem is None, f"{problem}\n  body: {json.dumps(body)[:500]}"


# ---- OpenAI's own request types as the reference ------------------------------------------------------------

# Where we accept what OpenAI's request types refuse, on purpose. Keys are places (`*` for list indexes);
# a value `None` means any break there, otherwise only breaks with values of these JSON types.
LENIENT: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "model": (None, "optional and any name: this server serves one model"),
    "messages.*.role": (("string",), "any role the chat template knows (TGI, and templates with e.g. `ipython`)"),
    "messages.*.tool_call_id": (None, "optional, as in TGI: not every template reads it"),
    "messages.*.tool_calls.*.function.arguments": (("object",), "an object, as TGI and many templates take"),
    "logit_bias": (("array",), "TGI's form: a list of biases"),
    "tool_choice": (("string",), "TGI's shorthand: the name of one of `tools`"),
    "tool_choice.type": (None, "huggingface_hub sends the named form without `type`"),
    "response_format.json_schema.name": (None, "optional, as in TGI"),
    "logprobs": (("boolean",), "legacy completions: `true` means 0 alternatives, `false` none"),
}


def _json_type(value: object) -> str:
    return {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}[type(value)]


def _lenient(mutation: Mutation) -> bool:
    if mutation.value is None and mutation.optional:
        return True  # everywhere: null for a key that may be left out means "left out" (TGI's clients send it)
    entry = LENIENT.get(mutation.site)
    if entry is None:
        return False
    kinds, _ = entry
    return kinds is None or not mutation.removes and _json_type(mutation.value) in kinds


def _openai_request_types() -> dict[str, Any]:
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase as ChatParams
    from openai.types.completion_create_params import CompletionCreateParamsBase as CompletionParams

    return {CHAT: ChatParams, COMPLETIONS: CompletionParams}


def _openai_bodies(openai: Doc, schema: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The bodies of BODIES that OpenAI's types take once they name a model (which OpenAI requires)."""
    bodies = [{"model": "tgi", **body} for body in BODIES[path]]
    return [body for body in bodies if openai.accepts(schema, body)]


@pytest.mark.parametrize("path", ROUTES)
def test_what_openai_refuses_we_refuse(path: str, answer: Any) -> None:
    schema = TypeAdapter(_openai_request_types()[path]).json_schema(ref_template="#/$defs/{model}")
    openai = Doc(schema, "urn:openai-request")
    ours = set(MODELS[path].model_fields)
    bases = _openai_bodies(openai, schema, path)
    # the bodies OpenAI takes use every field both APIs have
    assert {name for body in bases for name in body} >= ours & set(schema["properties"]) - {"logit_bias"}
    failures, count = [], 0
    for base in bases:
        base_answer = answer(path, base)
        for mutation in mutations(openai, schema, base):
            if mutation.field not in ours or _lenient(mutation) or _masked(mutation.field, base_answer):
                continue
            count += 1
            got = answer(path, mutation.apply(base))
            problem = _refused(got, mutation.field, base_answer if base_answer.status != 200 else None)
            if problem:
                failures.append(f"{mutation}: {problem}")
    assert count > 100
    assert not failures, f"{len(failures)} of {count} bodies that OpenAI refuses:\n" + "\n".join(failures[:40])


def test_leniencies_are_still_needed(answer: Any) -> None:
    """Each LENIENT entry is a place where OpenAI's types refuse something we accept; one that no longer
    applies is removed."""
    used = set()
    for path in ROUTES:
        schema = TypeAdapter(_openai_request_types()[path]).json_schema(ref_template="#/$defs/{model}")
        openai = Doc(schema, "urn:openai-request")
        for base in _openai_bodies(openai, schema, path):
            base_answer = answer(path, base)
            for mutation in mutations(openai, schema, base):
                if mutation.site in LENIENT and _lenient(mutation) and _refused(
                        answer(path, mutation.apply(base)), mutation.field,
                        base_answer if base_answer.status != 200 else None):
                    used.add(mutation.site)
    unused = sorted(set(LENIENT) - used)
    assert unused == [], unused
