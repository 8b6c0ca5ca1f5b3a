"""Side-by-side timing of two grammar engines for structured output: llguidance and xgrammar.

Measured on the embedded model's tokenizer (SmolLM2-135M-Instruct, vocab 49152, eos id 2), single process:

* tokenizer setup (once per server);
* time to a ready matcher per grammar: cold (first compile, matcher included) and warm (llguidance: deep_copy
  of a kept matcher, as it has no compile cache; xgrammar: its compiler's cache hit plus a new GrammarMatcher);
* per-token mask time, one thread: walk a valid instance of each grammar token by token (mask, then consume);
* a batch of 16 matchers filling their masks together per decode step (llguidance LLExecutor, xgrammar
  BatchGrammarMatcher);
* JSON-schema feature probes: does an engine reject the schema, enforce the keyword, or ignore it (accept an
  instance that breaks it)?

xgrammar is not a dependency of tgi-py (its wheel requires triton). Install it beside the venv, not into it:

    pip download --no-deps -d /tmp/wh xgrammar apache-tvm-ffi
    pip install --no-deps --target /tmp/xg /tmp/wh/xgrammar*.whl /tmp/wh/apache_tvm_ffi*.whl

Run (about 10 seconds on 2 cores; without xgrammar importable, only llguidance is measured):

    PYTHONPATH=/tmp/xg nice -n 19 python -m bench.grammar_engines [--walks 10] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llguidance
import llguidance.torch as llg_torch
import tokenizers
import torch

TOKENIZER = Path("~/.cache/tgi-py/SmolLM2-135M-Instruct/tokenizer.json").expanduser()
VOCAB = 49152
EOS = 2
BATCH = 16


# --------------------------------------------------------------------------------------------------------------
# The workload: grammars and a valid instance of each


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "json" | "regex" | "lark"
    grammar: Any  # a schema dict, or the regex / Lark source
    instance: Any  # JSON value (serialized compactly) or the literal text

    def text(self) -> str:
        if self.kind == "json":
            return json.dumps(self.instance, separators=(",", ":"), ensure_ascii=False)
        return str(self.instance)


def _obj(props: dict[str, Any], required: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else list(required),
        "additionalProperties": False,
    }


def _tool(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return _obj({"name": {"const": name}, "arguments": _obj(args)})


CASES: list[Case] = [
    Case(
        "flat_object",
        "json",
        _obj(
            {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "email": {"type": "string"},
                "active": {"type": "boolean"},
                "score": {"type": "number"},
            }
        ),
        {"id": 1234, "name": "Ada Lovelace", "email": "ada@example.com", "active": True, "score": 97.5},
    ),
    Case(
        "nested_ref",
        "json",
        {
            "$defs": {
                "address": _obj(
                    {"street": {"type": "string"}, "city": {"type": "string"}, "country": {"type": "string"}}
                ),
                "contact": _obj({"kind": {"type": "string"}, "value": {"type": "string"}}),
            },
            **_obj(
                {
                    "name": {"type": "string"},
                    "home": {"$ref": "#/$defs/address"},
                    "work": {"$ref": "#/$defs/address"},
                    "contacts": {"type": "array", "items": {"$ref": "#/$defs/contact"}},
                }
            ),
        },
        {
            "name": "Grace Hopper",
            "home": {"street": "1 Main St", "city": "Arlington", "country": "US"},
            "work": {"street": "Navy Yard", "city": "Washington", "country": "US"},
            "contacts": [{"kind": "email", "value": "grace@navy.mil"}, {"kind": "phone", "value": "555-0100"}],
        },
    ),
    Case(
        "arrays_bounded",
        "json",
        _obj(
            {
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5},
                "matrix": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
                    "minItems": 2,
                    "maxItems": 4,
                },
            }
        ),
        {"tags": ["cpu", "grammar", "bench"], "matrix": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]},
    ),
    Case(
        "enums",
        "json",
        _obj(
            {
                "status": {"enum": ["open", "closed", "pending", "on_hold"]},
                "priority": {"enum": [1, 2, 3, 5, 8]},
                "kind": {"const": "ticket"},
                "color": {"type": "string", "enum": ["red", "green", "blue", "cyan", "magenta", "yellow"]},
            }
        ),
        {"status": "pending", "priority": 5, "kind": "ticket", "color": "magenta"},
    ),
    Case(
        "any_of",
        "json",
        _obj(
            {
                "value": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "integer"},
                        {"type": "null"},
                        _obj({"x": {"type": "number"}, "y": {"type": "number"}}),
                    ]
                },
                "items": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            }
        ),
        {"value": {"x": 1.5, "y": -2.25}, "items": ["a", 1, "b", 22, "ccc"]},
    ),
    Case(
        "bounded_numbers",
        "json",
        _obj(
            {
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "count": {"type": "integer", "minimum": 1},
                "temperature": {"type": "number", "minimum": -50, "maximum": 60},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            }
        ),
        {"age": 42, "count": 1000, "temperature": -12.5, "ratio": 0.375},
    ),
    Case(
        "string_patterns",
        "json",
        _obj(
            {
                "zip": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"},
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "code": {"type": "string", "minLength": 2, "maxLength": 8},
                "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
            }
        ),
        {"zip": "02139-4307", "sku": "ABC-1234", "code": "x7Q2", "hex": "#1f2e3d"},
    ),
    Case(
        "tool_call_5",
        "json",
        {
            "anyOf": [
                _tool("get_weather", {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}),
                _tool(
                    "search_web",
                    {"query": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}},
                ),
                _tool(
                    "send_email",
                    {
                        "to": {"type": "array", "items": {"type": "string"}},
                        "subject": {"type": "string"},
                        "body": {"type": "string"},
                    },
                ),
                _tool(
                    "create_event",
                    {
                        "title": {"type": "string"},
                        "start": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}$"},
                        "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 480},
                        "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
                    },
                ),
                _tool("calculator", {"expression": {"type": "string"}}),
            ]
        },
        {
            "name": "create_event",
            "arguments": {
                "title": "Grammar engine review",
                "start": "2026-12-07T10:30",
                "duration_minutes": 45,
                "attendees": ["lead@example.com", "perf@example.com"],
            },
        },
    ),
    Case(
        "regex_logline",
        "regex",
        r"[0-9]{4}-[0-9]{2}-[0-9]{2} (INFO|WARN|ERROR) [a-z_]+: [a-zA-Z ]{1,80}",
        "2026-12-06 WARN grammar_engine: mask computation took longer than expected",
    ),
    Case(
        "lark_arith",
        "lark",
        "\n".join(
            [
                "start: expr",
                'expr: term (("+" | "-") term)*',
                'term: factor (("*" | "/") factor)*',
                'factor: NUMBER | "(" expr ")" | "-" factor',
                r"NUMBER: /[0-9]+(\.[0-9]+)?/",
            ]
        ),
        "(3+4)*12.5-7/(2+-1)*(10-3.25)",
    ),
]


@dataclass(frozen=True)
class Probe:
    """One JSON-schema keyword: a schema using it, an instance that satisfies it and one that breaks it."""

    name: str
    schema: dict[str, Any]
    good: Any
    bad: Any


PROBES: list[Probe] = [
    Probe("multipleOf", {"type": "integer", "multipleOf": 5}, 15, 7),
    Probe("minLength/maxLength", {"type": "string", "minLength": 3, "maxLength": 5}, "abcd", "ab"),
    Probe("format: date-time", {"type": "string", "format": "date-time"}, "2026-12-06T00:45:00Z", "yesterday"),
    Probe("format: email", {"type": "string", "format": "email"}, "ada@example.com", "not an email"),
    # JSON Schema's pattern is a search, not a full match: "^x-" allows "x-abc".
    Probe("pattern ^x- (a search)", {"type": "string", "pattern": "^x-"}, "x-abc", "y-abc"),
    Probe("pattern with lookahead", {"type": "string", "pattern": "^(?=.*[0-9])[a-z0-9]{4,8}$"}, "abc1", "abcd"),
    Probe("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, [1, 2], [1, 1]),
    Probe(
        "prefixItems",
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
        ["a", 1],
        [1, "a"],
    ),
    Probe(
        "allOf",
        {"allOf": [_obj({"a": {"type": "integer"}}, []), {"type": "object", "required": ["a"]}]},
        {"a": 1},
        {},
    ),
    Probe("oneOf", {"oneOf": [{"type": "integer"}, {"type": "string"}]}, 3, True),
    Probe("not", {"not": {"type": "string"}}, 1, "x"),
    Probe(
        "if/then/else",
        {
            "type": "object",
            "properties": {"k": {"type": "string"}, "v": {}},
            "required": ["k", "v"],
            "if": {"properties": {"k": {"const": "n"}}},
            "then": {"properties": {"v": {"type": "integer"}}},
            "else": {"properties": {"v": {"type": "string"}}},
        },
        {"k": "n", "v": 1},
        {"k": "n", "v": "one"},
    ),
    Probe(
        "recursive $ref",
        {
            "$defs": {
                "node": _obj({"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}})
            },
            "$ref": "#/$defs/node",
        },
        {"v": 1, "kids": [{"v": 2, "kids": []}]},
        {"v": 1, "kids": [{"v": "x", "kids": []}]},
    ),
    Probe(
        "patternProperties",
        {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False},
        {"x-a": 1},
        {"y": 1},
    ),
    Probe(
        "additionalProperties: schema",
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"a": 1},
        {"a": "s"},
    ),
    Probe(
        "min/maxProperties",
        {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1, "maxProperties": 2},
        {"a": 1},
        {},
    ),
    Probe(
        "dependentRequired",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "dependentRequired": {"a": ["b"]},
        },
        {"a": 1, "b": 2},
        {"a": 1},
    ),
    Probe("number range (float)", {"type": "number", "minimum": 0.5, "maximum": 1.5}, 1.25, 2.5),
]


# --------------------------------------------------------------------------------------------------------------
# The engines behind one small interface


class Rejected(Exception):
    """The engine refused the grammar."""


def _allowed(bitmask: torch.Tensor, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token >> 5]) >> (token & 31)) & 1)


class Engine:
    name: str = ""
    version: str = ""

    def setup(self, tok: tokenizers.Tokenizer) -> dict[str, float]:
        """Build the per-server tokenizer state; return named timings in seconds."""
        raise NotImplementedError

    def compile(self, case_kind: str, grammar: Any) -> Any:
        """A ready matcher, first time for this grammar. Raises Rejected."""
        raise NotImplementedError

    def compile_warm(self, case_kind: str, grammar: Any, cold_matcher: Any) -> Any:
        """A ready matcher for a grammar seen before, the engine's cheapest way."""
        raise NotImplementedError

    def keep(self, case_kind: str, grammar: Any, cold_matcher: Any) -> Any:
        """What a server would keep per grammar to start new matchers from (see fresh)."""
        raise NotImplementedError

    def fresh(self, kept: Any) -> Any:
        raise NotImplementedError

    def fill(self, matcher: Any, bitmask: torch.Tensor) -> None:
        raise NotImplementedError

    def consume(self, matcher: Any, token: int) -> bool:
        raise NotImplementedError

    def reset(self, matcher: Any) -> None:
        raise NotImplementedError

    def batch_fill(self, pairs: list[tuple[Any, int]], bitmask: torch.Tensor) -> None:
        raise NotImplementedError

    def accepts(self, matcher: Any, tokens: list[int]) -> bool:
        """Whether the whole sequence, then EOS, is accepted (consumes the matcher)."""
        raise NotImplementedError


class LLGuidance(Engine):
    name = "llguidance"

    def __init__(self, threads: int) -> None:
        self.version = llguidance.__version__
        self.threads = threads
        self.tokenizer: llguidance.LLTokenizer | None = None
        self.executor = llguidance.LLExecutor(num_threads=threads)

    def setup(self, tok: tokenizers.Tokenizer) -> dict[str, float]:
        t0 = time.perf_counter()
        self.tokenizer = llguidance.LLTokenizer(tok.to_str(), n_vocab=VOCAB, eos_token=[EOS])
        return {"LLTokenizer (incl. Tokenizer.to_str)": time.perf_counter() - t0}

    def _grammar(self, kind: str, grammar: Any) -> str:
        if kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(grammar)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(grammar)
        return llguidance.LLMatcher.grammar_from_lark(grammar)

    def compile(self, case_kind: str, grammar: Any) -> llguidance.LLMatcher:
        assert self.tokenizer is not None
        try:
            m = llguidance.LLMatcher(self.tokenizer, self._grammar(case_kind, grammar), log_level=0)
        except ValueError as e:  # an unparsable schema argument; grammar errors set is_error instead
            raise Rejected(str(e)) from e
        if m.is_error():
            raise Rejected(m.get_error())
        return m

    def compile_warm(self, case_kind: str, grammar: Any, cold_matcher: Any) -> llguidance.LLMatcher:
        # No compile cache in llguidance: a server keeps a pristine matcher per grammar and copies it.
        return cold_matcher.deep_copy()

    def keep(self, case_kind: str, grammar: Any, cold_matcher: Any) -> Any:
        return cold_matcher.deep_copy()

    def fresh(self, kept: Any) -> Any:
        return kept.deep_copy()

    def fill(self, matcher: Any, bitmask: torch.Tensor) -> None:
        llg_torch.fill_next_token_bitmask(matcher, bitmask, 0)

    def consume(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token))

    def reset(self, matcher: Any) -> None:
        matcher.reset()

    def batch_fill(self, pairs: list[tuple[Any, int]], bitmask: torch.Tensor) -> None:
        llg_torch.fill_next_token_bitmask_par(self.executor, pairs, bitmask)

    def accepts(self, matcher: Any, tokens: list[int]) -> bool:
        seq = [*tokens, EOS]
        return matcher.validate_tokens(seq) == len(seq)


class XGrammar(Engine):
    name = "xgrammar"

    def __init__(self, threads: int) -> None:
        t0 = time.perf_counter()
        self.xgr = importlib.import_module("xgrammar")  # imports transformers and torch too
        self.import_s = time.perf_counter() - t0
        self.version = importlib.metadata.version("xgrammar")
        self.threads = threads
        self.compiler: Any = None
        self.batch = self.xgr.BatchGrammarMatcher(max_threads=threads)

    def setup(self, tok: tokenizers.Tokenizer) -> dict[str, float]:
        transformers = importlib.import_module("transformers")
        t1 = time.perf_counter()
        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
        t2 = time.perf_counter()
        info = self.xgr.TokenizerInfo.from_huggingface(hf, vocab_size=VOCAB, stop_token_ids=[EOS])
        t3 = time.perf_counter()
        # The compiler's threads build the per-grammar token-mask cache; one per core we give it.
        self.compiler = self.xgr.GrammarCompiler(info, max_threads=self.threads, cache_enabled=True)
        t4 = time.perf_counter()
        return {
            "import xgrammar (torch already loaded)": self.import_s,
            "PreTrainedTokenizerFast(tokenizer_object=...)": t2 - t1,
            "TokenizerInfo.from_huggingface": t3 - t2,
            "GrammarCompiler(...)": t4 - t3,
        }

    def _compiled(self, kind: str, grammar: Any) -> Any:
        try:
            if kind == "json":
                return self.compiler.compile_json_schema(json.dumps(grammar))
            if kind == "regex":
                return self.compiler.compile_regex(grammar)
            return self.compiler.compile_lark(grammar)
        except Exception as e:  # xgrammar raises RuntimeError / its own types for unsupported input
            raise Rejected(f"{type(e).__name__}: {e}") from e

    def compile(self, case_kind: str, grammar: Any) -> Any:
        return self.xgr.GrammarMatcher(self._compiled(case_kind, grammar))

    def compile_warm(self, case_kind: str, grammar: Any, cold_matcher: Any) -> Any:
        return self.xgr.GrammarMatcher(self._compiled(case_kind, grammar))  # the compiler's cache hit

    def keep(self, case_kind: str, grammar: Any, cold_matcher: Any) -> Any:
        return self._compiled(case_kind, grammar)  # the CompiledGrammar

    def fresh(self, kept: Any) -> Any:
        return self.xgr.GrammarMatcher(kept)

    def fill(self, matcher: Any, bitmask: torch.Tensor) -> None:
        matcher.fill_next_token_bitmask(bitmask, 0)

    def consume(self, matcher: Any, token: int) -> bool:
        return bool(matcher.accept_token(token))

    def reset(self, matcher: Any) -> None:
        matcher.reset()

    def batch_fill(self, pairs: list[tuple[Any, int]], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask([m for m, _ in pairs], bitmask, [i for _, i in pairs])

    def accepts(self, matcher: Any, tokens: list[int]) -> bool:
        return all(matcher.accept_token(t) for t in tokens) and bool(matcher.accept_token(EOS))


# --------------------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class CaseResult:
    tokens: int = 0
    rejected: str = ""
    cold_ms: float = 0.0
    warm_ms: float = 0.0
    first_mask_us: float = 0.0
    masks_us: list[float] = field(default_factory=list)
    wrong: int = 0  # valid tokens the mask forbade or the matcher refused


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def _walk(engine: Engine, matcher: Any, tokens: list[int], bitmask: torch.Tensor, out: list[float]) -> int:
    """Mask and consume each token, then mask before EOS and check EOS is allowed; return the wrong count."""
    wrong = 0
    for t in [*tokens, EOS]:
        t0 = time.perf_counter_ns()
        engine.fill(matcher, bitmask)
        out.append((time.perf_counter_ns() - t0) / 1000)
        if not _allowed(bitmask, 0, t):
            wrong += 1
        if t != EOS and not engine.consume(matcher, t):
            wrong += 1
            break
    return wrong


def measure_case(engine: Engine, case: Case, tokens: list[int], walks: int) -> tuple[CaseResult, Any]:
    r = CaseResult(tokens=len(tokens))
    t0 = time.perf_counter()
    try:
        matcher = engine.compile(case.kind, case.grammar)
    except Rejected as e:
        r.rejected = str(e).strip().splitlines()[0][:160] if str(e).strip() else "rejected"
        return r, None
    r.cold_ms = (time.perf_counter() - t0) * 1e3
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        engine.compile_warm(case.kind, case.grammar, matcher)
        warm.append((time.perf_counter() - t0) * 1e3)
    r.warm_ms = statistics.median(warm)

    bitmask = torch.full((1, (VOCAB + 31) // 32), -1, dtype=torch.int32)
    kept = engine.keep(case.kind, case.grammar, matcher)  # for the batch run, before the walks move matcher
    first: list[float] = []
    r.wrong += _walk(engine, matcher, tokens, bitmask, first)  # the cold walk: lazily built state included
    r.first_mask_us = first[0]
    for _ in range(walks):
        engine.reset(matcher)
        r.wrong += _walk(engine, matcher, tokens, bitmask, r.masks_us)
    return r, kept


@dataclass
class BatchResult:
    steps_ms: list[float] = field(default_factory=list)
    full_steps_ms: list[float] = field(default_factory=list)  # steps with all 16 matchers live
    wrong: int = 0


def measure_batch(
    engine: Engine, kept: dict[str, Any], seqs: dict[str, list[int]], names: list[str], repeats: int, res: BatchResult
) -> None:
    bitmask = torch.full((BATCH, (VOCAB + 31) // 32), -1, dtype=torch.int32)
    for _ in range(repeats):
        slots = [names[i % len(names)] for i in range(BATCH)]
        matchers = [engine.fresh(kept[n]) for n in slots]
        seq = [[*seqs[n], EOS] for n in slots]
        pos = [0] * BATCH
        while True:
            live = [i for i in range(BATCH) if pos[i] < len(seq[i])]
            if not live:
                break
            pairs = [(matchers[i], i) for i in live]
            t0 = time.perf_counter_ns()
            engine.batch_fill(pairs, bitmask)
            ms = (time.perf_counter_ns() - t0) / 1e6
            res.steps_ms.append(ms)
            if len(live) == BATCH:
                res.full_steps_ms.append(ms)
            for i in live:
                t = seq[i][pos[i]]
                if not _allowed(bitmask, i, t):
                    res.wrong += 1
                if t != EOS and not engine.consume(matchers[i], t):
                    res.wrong += 1
                    pos[i] = len(seq[i])
                pos[i] += 1


def probe(engine: Engine, tok: tokenizers.Tokenizer, p: Probe) -> str:
    def ids(v: Any) -> list[int]:
        return tok.encode(json.dumps(v, separators=(",", ":")), add_special_tokens=False).ids

    try:
        good_m = engine.compile("json", p.schema)
        bad_m = engine.compile_warm("json", p.schema, good_m)
    except Rejected as e:
        msg = " ".join(str(e).split())
        return f"rejects schema ({msg[:40]})"
    ok_good = engine.accepts(good_m, ids(p.good))
    ok_bad = engine.accepts(bad_m, ids(p.bad))
    if not ok_good:
        return "REFUSES A VALID INSTANCE"
    return "ignored (accepts invalid)" if ok_bad else "enforced"


# --------------------------------------------------------------------------------------------------------------
# Report


def machine_info() -> list[str]:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"cpu: {model}, {os.cpu_count()} logical CPUs; {platform.platform()}",
        f"python {platform.python_version()}, torch {torch.__version__}, tokenizers {tokenizers.__version__}",
    ]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _f(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER)
    ap.add_argument("--walks", type=int, default=10, help="timed walks per grammar after the cold one")
    ap.add_argument("--batch-repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="for the batch fill and xgrammar's compiler"
    )
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)

    tok = tokenizers.Tokenizer.from_file(str(args.tokenizer))
    engines: list[Engine] = [LLGuidance(args.threads)]
    try:
        engines.append(XGrammar(args.threads))
    except ImportError as e:
        print(f"xgrammar not importable ({e}); measuring llguidance only", file=sys.stderr)

    print("# grammar engines: llguidance vs xgrammar")
    for line in machine_info():
        print(line)
    print("engines: " + ", ".join(f"{e.name} {e.version}" for e in engines))
    print(f"tokenizer: {args.tokenizer} (vocab {tok.get_vocab_size()}, mask over {VOCAB}, eos {EOS})")
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"threads: batch fill and xgrammar compiler {args.threads}; single-matcher masks 1; walks {args.walks}")

    seqs = {c.name: tok.encode(c.text(), add_special_tokens=False).ids for c in CASES}
    raw: dict[str, Any] = {"machine": machine_info(), "engines": {}}
    results: dict[str, dict[str, CaseResult]] = {}
    kept: dict[str, dict[str, Any]] = {}
    print("\n## setup (once per server)")
    for e in engines:
        parts = e.setup(tok)
        # A trivial grammar first, so one-off lazy initialisation is shown here, not charged to the first case.
        t0 = time.perf_counter()
        try:
            e.compile("json", {"type": "string"})
        except Rejected:
            pass
        parts["first-ever compile ({type: string})"] = time.perf_counter() - t0
        print(
            f"{e.name}: total {sum(parts.values()) * 1e3:.0f} ms = "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
        )
        raw["engines"][e.name] = {"version": e.version, "setup_s": parts}
        results[e.name] = {}
        kept[e.name] = {}
    # Engines alternate case by case, so a burst of load elsewhere on the machine hits both alike.
    for c in CASES:
        for e in engines:
            r, k = measure_case(e, c, seqs[c.name], args.walks)
            results[e.name][c.name] = r
            if k is not None:
                kept[e.name][c.name] = k

    print("\n## time to a ready matcher, ms (cold = first compile; warm = llguidance deep_copy, xgrammar cache hit)")
    hdr = ["grammar", "tokens"]
    for e in engines:
        hdr += [f"{e.name} cold", f"{e.name} warm"]
    rows = []
    for c in CASES:
        row = [c.name, str(len(seqs[c.name]))]
        for e in engines:
            r = results[e.name][c.name]
            row += ["REJECTED", "-"] if r.rejected else [_f(r.cold_ms), _f(r.warm_ms, 3)]
        rows.append(row)
    print(table(hdr, rows))
    for e in engines:
        for c in CASES:
            if results[e.name][c.name].rejected:
                print(f"  {e.name} rejected {c.name}: {results[e.name][c.name].rejected}")

    print("\n## per-token mask, microseconds, one thread (valid instance walked; 1st = first mask of the cold walk)")
    hdr = ["grammar"]
    for e in engines:
        hdr += [f"{e.name} mean", "p50", "p99", "1st"]
    rows = []
    pooled: dict[str, list[float]] = {e.name: [] for e in engines}
    for c in CASES:
        row = [c.name]
        for e in engines:
            r = results[e.name][c.name]
            if r.rejected or not r.masks_us:
                row += ["-", "-", "-", "-"]
                continue
            pooled[e.name] += r.masks_us
            row += [
                _f(statistics.fmean(r.masks_us)),
                _f(_pct(r.masks_us, 50)),
                _f(_pct(r.masks_us, 99)),
                _f(r.first_mask_us),
            ]
        rows.append(row)
    row = ["ALL (pooled)"]
    for e in engines:
        xs = pooled[e.name]
        row += [_f(statistics.fmean(xs)), _f(_pct(xs, 50)), _f(_pct(xs, 99)), ""] if xs else ["-"] * 4
    rows.append(row)
    print(table(hdr, rows))
    for e in engines:
        bad = sum(r.wrong for r in results[e.name].values())
        print(f"  {e.name}: {bad} valid tokens masked out or refused over all walks")

    common = [c.name for c in CASES if all(c.name in kept[e.name] for e in engines)]
    print(
        f"\n## batch of {BATCH} matchers per decode step, ms ({args.threads} threads; grammars round-robin over "
        f"{len(common)} that every engine compiled; {args.batch_repeats} runs)"
    )
    rows = []
    batch = {e.name: BatchResult() for e in engines}
    for _ in range(args.batch_repeats):
        for e in engines:
            measure_batch(e, kept[e.name], seqs, common, 1, batch[e.name])
    for e in engines:
        b = batch[e.name]
        full = b.full_steps_ms or b.steps_ms
        rows.append(
            [
                e.name,
                _f(statistics.fmean(full), 3),
                _f(_pct(full, 50), 3),
                _f(_pct(full, 99), 3),
                _f(statistics.fmean(b.steps_ms), 3),
                str(len(b.steps_ms)),
                str(b.wrong),
            ]
        )
        raw["engines"][e.name]["batch_ms"] = {"full": full, "all": b.steps_ms}
    print(table(["engine", "16 live: mean", "p50", "p99", "all steps mean", "steps", "wrong"], rows))

    print("\n## JSON-schema feature probes (compile; valid instance must pass; does an invalid one get through?)")
    rows = [[p.name, *(probe(e, tok, p) for e in engines)] for p in PROBES]
    print(table(["keyword", *(e.name for e in engines)], rows))

    print(f"\nload average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.json:
        for e in engines:
            raw["engines"][e.name]["cases"] = {k: vars(v) for k, v in results[e.name].items()}
        raw["probes"] = {r[0]: r[1:] for r in rows}
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
