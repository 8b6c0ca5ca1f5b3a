"""`parameters.grammar` (issue 17) through the `text-generation` client (0.7.0), unmodified: its `Grammar`
model with `GrammarType.Json` and `GrammarType.Regex`, on generate and generate_stream (POST {base_url}).

A finished grammar ends the generation with EOS: finish_reason `eos_token`, before max_new_tokens. Random
weights: every output is validated (tests/e2e/clients/structured.py).
"""

from __future__ import annotations

import json

import pytest
from text_generation import AsyncClient, Client
from text_generation.errors import ValidationError
from text_generation.types import FinishReason, Grammar, GrammarType

from tests.e2e.clients.helpers import assert_stream_integrity
from tests.e2e.clients.structured import (
    ITEMS,
    MAX_TOKENS,
    PERSON,
    POINT,
    REGEXES,
    SEED,
    TEMPERATURE,
    validate_json,
    validate_regex,
)
from tests.e2e.server import LaunchedServer

# The client calls pydantic v1's `.dict()`; its deprecation warning is the client's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")
PROMPT = "Give me JSON:"

CASES = {
    "json-person": (Grammar(type=GrammarType.Json, value=PERSON), PERSON),
    "json-items": (Grammar(type=GrammarType.Json, value=ITEMS), ITEMS),
    # The value may also be a schema serialised as a string (TGI accepts both).
    "json-point-as-string": (Grammar(type=GrammarType.Json, value=json.dumps(POINT)), POINT),
    **{f"regex-{i}": (Grammar(type=GrammarType.Regex, value=r), r) for i, r in enumerate(REGEXES)},
}


def check(full, events: list, expected) -> None:
    text = full.generated_text
    if isinstance(expected, str):
        validate_regex(text, expected)
    else:
        validate_json(text, expected)
    assert full.details.finish_reason == FinishReason.EndOfSequenceToken, (text, full.details.finish_reason)
    assert full.details.generated_tokens < MAX_TOKENS

    assert [e.token.id for e in events] == [t.id for t in full.details.tokens]
    assert events[-1].generated_text == text
    assert events[-1].details.finish_reason == FinishReason.EndOfSequenceToken
    assert all(e.generated_text is None for e in events[:-1])
    assert_stream_integrity([e.token.text for e in events if not e.token.special], text)


@pytest.mark.parametrize("case", list(CASES))
def test_grammar_generate_equals_generate_stream(server: LaunchedServer, case: str) -> None:
    grammar, expected = CASES[case]
    client = Client(server.url, timeout=60)
    # Greedy.
    full = client.generate(PROMPT, max_new_tokens=MAX_TOKENS, grammar=grammar)
    check(full, list(client.generate_stream(PROMPT, max_new_tokens=MAX_TOKENS, grammar=grammar)), expected)
    # Sampled, with a seed.
    sampled = {"max_new_tokens": MAX_TOKENS, "grammar": grammar, "do_sample": True, "temperature": TEMPERATURE,
               "seed": SEED}
    full = client.generate(PROMPT, **sampled)
    check(full, list(client.generate_stream(PROMPT, **sampled)), expected)


async def test_async_client(server: LaunchedServer) -> None:
    client = AsyncClient(server.url, timeout=60)
    for case in ("json-person", "regex-2"):
        grammar, expected = CASES[case]
        args = {"max_new_tokens": MAX_TOKENS, "grammar": grammar, "do_sample": True, "temperature": TEMPERATURE,
                "seed": SEED + 1}
        full = await client.generate(PROMPT, **args)
        check(full, [e async for e in client.generate_stream(PROMPT, **args)], expected)


def test_max_new_tokens_mid_structure(server: LaunchedServer) -> None:
    """Out of tokens inside the object: `length`, and the text so far, a prefix of the finished text."""
    client = Client(server.url, timeout=60)
    grammar = Grammar(type=GrammarType.Json, value=PERSON)
    whole = client.generate(PROMPT, max_new_tokens=MAX_TOKENS, grammar=grammar).generated_text
    cut = client.generate(PROMPT, max_new_tokens=10, grammar=grammar)
    assert cut.details.finish_reason == FinishReason.Length
    assert cut.details.generated_tokens == 10
    assert cut.generated_text and whole.startswith(cut.generated_text) and cut.generated_text != whole
    events = list(client.generate_stream(PROMPT, max_new_tokens=10, grammar=grammar))
    assert events[-1].details.finish_reason == FinishReason.Length
    assert events[-1].generated_text == cut.generated_text


def test_invalid_grammars_are_validation_errors(server: LaunchedServer) -> None:
    client = Client(server.url, timeout=60)
    for grammar, needle in ((Grammar(type=GrammarType.Regex, value="(ab"), "unclosed group"),
                            (Grammar(type=GrammarType.Json, value={"type": "strin"}), "strin"),
                            (Grammar(type=GrammarType.Json, value={"type": "integer", "minimum": 5, "maximum": 1}),
                             "minimum")):
        with pytest.raises(ValidationError, match=needle):
            client.generate(PROMPT, max_new_tokens=8, grammar=grammar)
        with pytest.raises(ValidationError, match=needle):
            list(client.generate_stream(PROMPT, max_new_tokens=8, grammar=grammar))
