"""How JSON schemas become grammars, the same for the router (which compiles and validates them) and the
shard (which also takes TGI's plain JSON-schema grammars off the wire)."""

from __future__ import annotations

# llguidance's JSON options. Whitespace is fixed, not free: with free whitespace a model can pad a value
# with spaces and newlines until it runs out of tokens (random weights do it every time; real models do
# it too), and the streamed tool-call parser has one layout to expect. The separators are json.dumps'
# defaults, the layout models have read most.
JSON_COMPILE_OPTIONS: dict[str, object] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

# llguidance's budget for building a grammar's lexer (its `initial_lexer_fuel`, ~50,000 a millisecond; the
# engine's default is 1,000,000). A small grammar can ask for a huge automaton (`(a{1000}){1000}`: 1.6 s to
# its first mask by default, 42 ms with this); ordinary schemas stay far below it.
INITIAL_LEXER_FUEL = 100_000
