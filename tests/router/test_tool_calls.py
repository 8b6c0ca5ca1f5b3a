"""Tool calls without a model: the grammar admits exactly the outputs the reader turns into OpenAI's
tool_calls, and the reader gives the same calls however the text is split into tokens."""

from __future__ import annotations

import json
import random
from pathlib import Path

import llguidance
import pytest
import tokenizers

from router.grammar import GrammarCompiler
from router.tool_call_stream import ToolCallReader
from router.tool_grammar import ToolChoice, resolve_tool_choice, tool_call_lark
from tests.model_factory import build_tokenizer

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
TOOLS = [WEATHER, CLOCK]
TWO_CALLS = ('[{"name": "get_weather", "arguments": {"city": "Pa\\"ri}s", "days": 2}}, '
             '{"name": "get_time", "arguments": {}}]')


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tokenizers.Tokenizer:
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(Path(out))
    return tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))


def accepts(tokenizer: tokenizers.Tokenizer, grammar: str, text: str) -> bool:
    lltok = llguidance.LLTokenizer(tokenizer.to_str())
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    ids = lltok.tokenize_str(text)
    return matcher.consume_tokens(ids) and matcher.is_accepting()


def test_choices_resolve_like_openai() -> None:
    assert resolve_tool_choice(None, "auto", None) is None
    assert resolve_tool_choice(TOOLS, "none", None) is None
    assert resolve_tool_choice(TOOLS, None, None) == ToolChoice(("get_weather", "get_time"), text=True, parallel=True)
    assert resolve_tool_choice(TOOLS, "required", False) == ToolChoice(("get_weather", "get_time"), False, False)
    assert resolve_tool_choice(TOOLS, "get_time", None) == ToolChoice(("get_time",), text=False, parallel=False)


def test_grammar_admits_calls_and_refuses_what_the_choice_forbids(tokenizer: tokenizers.Tokenizer) -> None:
    compiler = GrammarCompiler(tokenizer)
    auto = compiler.compile_lark(tool_call_lark(TOOLS, resolve_tool_choice(TOOLS, "auto", None)))
    required_single = compiler.compile_lark(tool_call_lark(TOOLS, resolve_tool_choice(TOOLS, "required", False)))
    named = compiler.compile_lark(tool_call_lark(TOOLS, resolve_tool_choice(TOOLS, "get_time", None)))
    one_call = '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    assert accepts(tokenizer, auto, TWO_CALLS)
    assert accepts(tokenizer, auto, "Sorry, no tool for that.")
    assert accepts(tokenizer, required_single, one_call)
    assert not accepts(tokenizer, required_single, TWO_CALLS)  # parallel_tool_calls: false
    assert not accepts(tokenizer, required_single, "plain text")
    assert not accepts(tokenizer, named, one_call)  # only get_time may be called
    assert accepts(tokenizer, named, '[{"name": "get_time", "arguments": {}}]')
    assert not accepts(tokenizer, auto, '[{"name": "get_weather", "arguments": {"days": 2}}]')  # city required


@pytest.mark.parametrize("seed", range(20))
def test_reader_gives_the_same_calls_however_the_text_is_split(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(TWO_CALLS)), rng.randint(1, 30)))
    pieces = [TWO_CALLS[a:b] for a, b in zip([0, *cuts], [*cuts, len(TWO_CALLS)], strict=True)]
    reader = ToolCallReader(text_allowed=True)
    opened: dict[int, str] = {}
    fragments: dict[int, str] = {}
    for piece in pieces:
        read = reader.feed(piece)
        assert read.content == ""
        for delta in read.deltas:
            if delta.name is not None:
                assert delta.arguments == "" and delta.id is not None
                opened[delta.index] = delta.name
            else:
                assert delta.index in opened  # a call's name always comes before its arguments
                fragments[delta.index] = fragments.get(delta.index, "") + delta.arguments
    assert opened == {0: "get_weather", 1: "get_time"}
    assert fragments == {0: '{"city": "Pa\\"ri}s", "days": 2}', 1: "{}"}
    assert [json.loads(c.arguments) for c in reader.calls] == [{"city": 'Pa"ri}s', "days": 2}, {}]
    assert len({c.id for c in reader.calls}) == 2


def test_plain_answer_is_content() -> None:
    reader = ToolCallReader(text_allowed=True)
    assert reader.feed("It is").content == "It is"
    assert reader.feed(" sunny [really]").content == " sunny [really]"
    assert reader.calls == [] and reader.content == "It is sunny [really]"


def test_cut_short_output_keeps_the_arguments_so_far() -> None:
    reader = ToolCallReader(text_allowed=False)
    reader.feed('[{"name": "get_weather", "arguments": {"ci')
    assert [(c.name, c.arguments) for c in reader.calls] == [("get_weather", '{"ci')]


def test_escaped_name_is_decoded() -> None:
    reader = ToolCallReader(text_allowed=False)
    reader.feed('[{"name": "caf\\u00e9", "arguments": {}}]')
    assert reader.calls[0].name == "café"


def test_each_tools_own_references_resolve(tokenizer: tokenizers.Tokenizer) -> None:
    # Two tools with a `date` definition each, one referring to its whole parameters (`#`).
    book = {"type": "function", "function": {"name": "book", "parameters": {
        "type": "object", "properties": {"day": {"$ref": "#/$defs/date"}, "next": {"$ref": "#"}},
        "required": ["day"], "additionalProperties": False, "$defs": {"date": {"enum": ["mon", "tue"]}}}}}
    count = {"type": "function", "function": {"name": "count", "parameters": {
        "type": "object", "properties": {"n": {"$ref": "#/$defs/date"}}, "required": ["n"],
        "additionalProperties": False, "$defs": {"date": {"type": "integer"}}}}}
    tools = [book, count]
    choice = resolve_tool_choice(tools, "required", None)
    assert choice is not None
    grammar = GrammarCompiler(tokenizer).compile_lark(tool_call_lark(tools, choice))
    assert accepts(tokenizer, grammar, '[{"name": "book", "arguments": {"day": "mon", "next": {"day": "tue"}}}, '
                                       '{"name": "count", "arguments": {"n": 3}}]')
    assert not accepts(tokenizer, grammar, '[{"name": "count", "arguments": {"n": "mon"}}]')
    assert not accepts(tokenizer, grammar, '[{"name": "book", "arguments": {"day": 3}}]')
