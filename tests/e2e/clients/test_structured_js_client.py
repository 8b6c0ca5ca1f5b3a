"""Tool calls and response_format (issue 17) through @huggingface/inference's chatCompletion and
chatCompletionStream (JavaScript, under node; tests/e2e/js/tools.mjs), against a real server.

The script makes the same request twice, non-streamed then streamed, and accumulates the streamed
`delta.tool_calls` by `index` as a JS user of the client does; the raw chunks come back too.
Random weights: every output is validated (tests/e2e/clients/structured.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.clients.structured import (
    EVENT,
    JSON_MESSAGES,
    MAX_TOKENS,
    PERSON,
    SEED,
    TEMPERATURE,
    TOOL_MESSAGES,
    TOOLS,
    TOOLS_MAX_TOKENS,
    accumulate_tool_calls,
    call_dicts,
    check_tool_calls,
    same_calls,
    structured_server,
    validate_json,
)
from tests.e2e.server import LaunchedServer


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[LaunchedServer]:
    """One server per module, with room for tool definitions in the prompt."""
    yield from structured_server(tiny_llama)


JS = Path(__file__).resolve().parent.parent / "js"


@pytest.fixture(scope="module", autouse=True)
def node_project() -> None:
    assert shutil.which("node"), "node is not installed"
    assert (JS / "node_modules" / "@huggingface" / "inference").is_dir(), \
        "tests/e2e/js is not installed: run `make install` (npm ci --prefix tests/e2e/js)"


def chat_twice(server: LaunchedServer, **args) -> dict:
    spec = {"url": server.url, "args": {"messages": TOOL_MESSAGES, "max_tokens": MAX_TOKENS,
                                        "temperature": TEMPERATURE, "seed": SEED, **args}}
    done = subprocess.run(["node", str(JS / "tools.mjs"), json.dumps(spec)], capture_output=True, text=True,
                          timeout=120, cwd=JS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    outcome = json.loads(lines[-1])
    assert outcome["ok"], outcome
    assert [r["url"] for r in outcome["requests"]] == [server.url + "/v1/chat/completions"] * 2
    return outcome


def check_calls(outcome: dict, names: set[str] | None = None) -> list[dict]:
    choice = outcome["result"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    assert choice["message"].get("content") is None, choice["message"]
    calls = call_dicts(choice["message"]["tool_calls"])
    check_tool_calls(TOOLS, calls, names=names)
    # What the JS user accumulated, and the stream's shape checked on the raw chunks.
    assert same_calls(outcome["accumulated"], calls), (outcome["accumulated"], calls)
    check_tool_calls(TOOLS, outcome["accumulated"], names=names)
    chunks = [c for c in outcome["chunks"] if c["choices"]]
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert same_calls(accumulate_tool_calls(deltas), calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    return calls


def test_chat_completion_with_tools_required(server: LaunchedServer) -> None:
    check_calls(chat_twice(server, tools=TOOLS, tool_choice="required", max_tokens=TOOLS_MAX_TOKENS))


def test_chat_completion_with_a_named_tool(server: LaunchedServer) -> None:
    name = EVENT["function"]["name"]
    calls = check_calls(chat_twice(server, tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}}),
                        names={name})
    assert all(c["function"]["name"] == name for c in calls)


def test_chat_completion_with_tools_auto(server: LaunchedServer) -> None:
    # One call at most, so that a call fits in max_tokens (a plain answer from random weights runs to it).
    outcome = chat_twice(server, tools=TOOLS, parallel_tool_calls=False)
    choice = outcome["result"]["choices"][0]
    if choice["message"].get("tool_calls"):
        check_calls(outcome)
    else:
        assert choice["finish_reason"] in ("stop", "length"), choice
        assert outcome["accumulated"] == []
        assert outcome["content"] == choice["message"]["content"]


def test_chat_completion_with_response_format(server: LaunchedServer) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    outcome = chat_twice(server, messages=JSON_MESSAGES, response_format=response_format)
    choice = outcome["result"]["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    validate_json(choice["message"]["content"], PERSON)
    assert outcome["content"] == choice["message"]["content"]
    assert outcome["chunks"][-1]["choices"][0]["finish_reason"] == "stop"
