"""Grammars for structured output: every accepted form compiled to llguidance's grammar text, checked
before the request is admitted, so that a bad grammar is a 422 and never a shard's problem.

Forms: TGI's `grammar` (json / json_object / json_schema / regex), OpenAI's `response_format` (mapped to
those by router/openai_schemas.py), and the tool-call grammars of router/tool_grammar.py (Lark text).
The shard builds its matchers from the text compiled here (shard/grammar.py).

A check is: the engine's own validation (its message becomes the 422), then a real matcher on the
model's tokenizer and its first mask, within a time budget. The engine's lexer fuel (common/grammar.py) and
that budget keep a small but pathological grammar (a regex like `(a{1000}){1000}` takes seconds to lex with
the engine's defaults) off the shards. Results,
errors included, are cached by grammar, so a schema that comes back costs nothing, and validation runs
on a worker thread (router/server.py), never on the event loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

import llguidance
import tokenizers

from common.grammar import INITIAL_LEXER_FUEL, JSON_COMPILE_OPTIONS
from router.schemas import Grammar

# A schema or regex larger than this is refused before compiling (bytes of its JSON text).
MAX_GRAMMAR_BYTES = 64 * 1024
# Compiling a grammar and computing its first mask must fit in this; typical schemas take 1-50 ms.
COMPILE_BUDGET_SECONDS = 0.25
CACHE_SIZE = 512


class GrammarError(ValueError):
    """A grammar that cannot be used: the message is the client's 422."""


class GrammarCompiler:
    """Thread-safe; one per router."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, budget_seconds: float = COMPILE_BUDGET_SECONDS) -> None:
        self._tokenizer_json = tokenizer.to_str()
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.budget_seconds = budget_seconds
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self._results: OrderedDict[str, str | GrammarError] = OrderedDict()
        # Built in the background now (~0.3 s for a 49k vocabulary), not in the first grammar's request.
        threading.Thread(target=self._tokenizer, name="grammar-tokenizer", daemon=True).start()

    def compile(self, grammar: Grammar) -> str:
        """The llguidance grammar text of a request's `grammar`, or GrammarError."""
        key = json.dumps([grammar.type, grammar.value], sort_keys=True, separators=(",", ":"))
        return self._cached(key, lambda: _from_grammar(grammar))

    def compile_lark(self, lark: str) -> str:
        """Grammar text from Lark source (the tool-call grammars), checked the same way."""
        return self._cached("lark:" + lark, lambda: llguidance.LLMatcher.grammar_from_lark(lark))

    # ---- internals ----------------------------------------------------------------------------
    def _cached(self, key: str, build: Any) -> str:
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                result = self._results[key]
                if isinstance(result, GrammarError):
                    raise result
                return result
        if len(key) > MAX_GRAMMAR_BYTES:
            raise GrammarError(f"grammar is too large: {len(key)} bytes (at most {MAX_GRAMMAR_BYTES})")
        try:
            result: str | GrammarError = self._check(build())
        except GrammarError as err:
            result = err
        except (ValueError, TypeError) as err:  # what llguidance's converters raise on input they cannot read
            result = GrammarError(f"invalid grammar: {err}")
        with self._lock:
            self._results[key] = result
            while len(self._results) > CACHE_SIZE:
                self._results.popitem(last=False)
        if isinstance(result, GrammarError):
            raise result
        return result

    def _check(self, text: str) -> str:
        lltokenizer = self._tokenizer()
        limits = llguidance.LLParserLimits(initial_lexer_fuel=INITIAL_LEXER_FUEL)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, lltokenizer, limits=limits)
        if is_error:
            raise GrammarError(f"invalid grammar: {messages[0]}")
        started = time.perf_counter()
        matcher = llguidance.LLMatcher(lltokenizer, text, log_level=0, limits=limits)
        if not matcher.is_error():
            matcher.compute_bitmask()
        if matcher.is_error():
            raise GrammarError(f"invalid grammar: {matcher.get_error()}")
        spent = time.perf_counter() - started
        if spent > self.budget_seconds:
            raise GrammarError(f"grammar is too complex: compiling it took {spent * 1e3:.0f} ms "
                               f"(at most {self.budget_seconds * 1e3:.0f} ms)")
        return text

    def _tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._lltokenizer is None:
                self._lltokenizer = llguidance.LLTokenizer(self._tokenizer_json, n_vocab=self._vocab_size)
            return self._lltokenizer


def _from_grammar(grammar: Grammar) -> str:
    if grammar.type == "regex":
        return llguidance.LLMatcher.grammar_from_regex(grammar.value)
    strict = False
    schema = grammar.value
    if grammar.type == "json_schema":
        schema, strict = grammar.value["schema"], grammar.value.get("strict") is True
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as err:
            raise GrammarError(f"grammar `value` is not a JSON schema: {err}") from None
    if not isinstance(schema, dict | bool):
        raise GrammarError("grammar `value` is not a JSON schema: it must be an object")
    # Without strict, keywords the engine does not implement are ignored (as most servers do); with
    # strict (OpenAI's flag) they are refused, so that nothing the client asked for is silently dropped.
    options = {**JSON_COMPILE_OPTIONS, "lenient": not strict}
    text = schema if isinstance(schema, dict) else json.dumps(schema)
    return llguidance.LLMatcher.grammar_from_json_schema(text, overrides=options)  # type: ignore[arg-type]
