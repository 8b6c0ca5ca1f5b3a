"""Tool calling as a grammar: what the model may write when a chat request carries `tools`.

The model writes its calls as one JSON array, each call an object with the tool's name first and then its
arguments, which follow that tool's `parameters` schema:

    [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": ...}]

`tool_choice` picks the grammar: "required" allows only calls, a named tool only one call of it, "auto"
either calls or a plain-text answer (any text that does not start with `[`), and "none" no grammar at all.
`parallel_tool_calls: false` allows one call per turn. router/tool_call_stream.py reads the output back
into OpenAI's `tool_calls`, as it streams. (TGI allows a single call and answers in text through a
synthetic `no_tool` function; a text branch in the grammar gives the same result without a fake tool.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.grammar import JSON_COMPILE_OPTIONS

# A tool without `parameters` takes none: its arguments are `{}`.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ToolChoice:
    """What a chat request allows: `names` the callable tools, `text` whether a plain answer is allowed."""

    names: tuple[str, ...]
    text: bool
    parallel: bool


def resolve_tool_choice(tools: list[dict[str, Any]] | None, choice: Any, parallel: bool | None) -> ToolChoice | None:
    """The request's tool choice; None when no tool may be called. `choice` is the validated
    `tool_choice`: None, a keyword, a bare tool name (TGI's shorthand) or an object with `function.name`."""
    if not tools:
        return None
    names = tuple(tool["function"]["name"] for tool in tools)
    name = getattr(getattr(choice, "function", None), "name", choice)
    if name == "none":
        return None
    if name in (None, "auto"):
        return ToolChoice(names, text=True, parallel=parallel is not False)
    if name == "required":
        return ToolChoice(names, text=False, parallel=parallel is not False)
    return ToolChoice((name,), text=False, parallel=False)


def tool_call_lark(tools: list[dict[str, Any]], choice: ToolChoice) -> str:
    """The Lark grammar (llguidance's dialect, JSON schemas inline) for `choice` over `tools`."""
    by_name = {tool["function"]["name"]: tool["function"] for tool in tools}
    names = list(dict.fromkeys(choice.names))
    # Each tool's parameters live under the root's $defs, so that their own `#/...` references still resolve.
    definitions = {f"arguments_{i}": _rebased(by_name[name].get("parameters") or NO_PARAMETERS, f"/$defs/arguments_{i}")
                   for i, name in enumerate(names)}
    calls = [_call_schema(name, f"#/$defs/arguments_{i}") for i, name in enumerate(names)]
    strict = all(by_name[name].get("strict") is True for name in choice.names)
    array: dict[str, Any] = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
        "$defs": definitions,
        # Without strict, keywords the engine does not implement are ignored (router/grammar.py).
        "x-guidance": {**JSON_COMPILE_OPTIONS, "lenient": not strict},
    }
    if not choice.parallel:
        array["maxItems"] = 1
    rules = ["calls: %json " + json.dumps(array, separators=(",", ":"))]
    if choice.text:
        # A plain answer is any text whose first character is not the `[` that opens the calls.
        return "\n".join(["start: calls | TEXT", r"TEXT: /[^\[](?s:.)*/", *rules])
    return "\n".join(["start: calls", *rules])


def _rebased(schema: Any, base: str) -> Any:
    """`schema` with every local reference (`#`, `#/$defs/x`, ...) rewritten to point under `base`."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _rebased(value, base) for key, value in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        out["$ref"] = "#" + base + ref[1:]
    return out


def _call_schema(name: str, arguments_ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": {"$ref": arguments_ref}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_prompt(tools: list[dict[str, Any]], choice: ToolChoice, preamble: str | None) -> str:
    """The text put after the last message for templates that do not render `tools` themselves (as TGI
    does): which tools exist, and the format the grammar will hold the model to."""
    listed = json.dumps([tools_entry for tools_entry in tools if tools_entry["function"]["name"] in choice.names],
                        ensure_ascii=False)
    how = ('To call tools, answer with a JSON array of calls, each {"name": <tool name>, "arguments": '
           '<object of arguments>}.')
    if choice.text:
        how += " If no tool fits, answer in plain text instead."
    return f"\n\n{preamble or 'You can call these tools:'}\n{listed}\n{how}"
