"""curl -N, with the exact requests from TGI's documentation, read as SSE from its stdout."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

from tests.e2e.clients.helpers import (
    HOLD_TOKENS,
    assert_full,
    assert_stream_integrity,
    data_events,
    native_generate,
    parse_sse,
    render_chat,
    token_count,
    wait_admits,
)
from tests.e2e.server import LaunchedServer

assert shutil.which("curl"), "these tests drive the curl command line: install curl"

CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is deep learning?"},
]


def host_port(server: LaunchedServer) -> str:
    return server.url.removeprefix("http://")


def curl(*args: str) -> bytes:
    done = subprocess.run(["curl", *args], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def chat_body(stream: bool, **extra) -> str:
    # The Messages API example of TGI's docs, with a bounded max_tokens.
    return json.dumps({"model": "tgi", "messages": CHAT_MESSAGES, "stream": stream, "max_tokens": 20, **extra})


def test_generate_stream_from_the_docs(server: LaunchedServer) -> None:
    raw = curl("-N", f"{host_port(server)}/generate_stream", "-X", "POST", "-d",
               '{"inputs":"What is Deep Learning?","parameters":{"max_new_tokens":20}}',
               "-H", "Content-Type: application/json")
    payloads = data_events(raw)
    assert "[DONE]" not in payloads  # the native route has no terminator
    events = [json.loads(p) for p in payloads]
    assert [e["index"] for e in events] == list(range(1, 21))
    final = events[-1]["generated_text"]
    assert final == native_generate(server, "What is Deep Learning?", 20)["generated_text"]
    assert all(e["generated_text"] is None for e in events[:-1])
    assert_stream_integrity([e["token"]["text"] for e in events], final)
    # The wire format is TGI's: `data:` then the JSON, without a space.
    assert raw.startswith(b"data:{")


def test_chat_stream_from_the_docs(server: LaunchedServer) -> None:
    # Exactly the docs' request: no temperature, so it samples (TGI's and OpenAI's default).
    raw = curl("-N", f"{host_port(server)}/v1/chat/completions", "-X", "POST", "-d", chat_body(True),
               "-H", "Content-Type: application/json")
    payloads = data_events(raw)
    assert payloads[-1] == "[DONE]"
    assert raw.endswith(b"data: [DONE]\n\n")  # with the space: huggingface_hub only recognises exactly that
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # It samples without a seed, so EOS may come before max_tokens (the tiny model only makes it unlikely):
    # one chunk per token either way, and the last one says which of the two ended it.
    assert 1 <= len(chunks) <= 20
    assert chunks[-1]["choices"][0]["finish_reason"] == ("length" if len(chunks) == 20 else "stop")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    # OpenAI names the role in the first chunk (TGI in every one); clients accept both.
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["delta"].get("role", "assistant") == "assistant" for c in chunks)


def test_greedy_chat_stream_equals_non_stream(server: LaunchedServer) -> None:
    raw = curl("-N", f"{host_port(server)}/v1/chat/completions", "-X", "POST", "-d", chat_body(True, temperature=0),
               "-H", "Content-Type: application/json")
    payloads = data_events(raw)
    assert payloads[-1] == "[DONE]"
    content = "".join(json.loads(p)["choices"][0]["delta"]["content"] for p in payloads[:-1])
    full = json.loads(curl(f"{host_port(server)}/v1/chat/completions", "-X", "POST", "-d",
                           chat_body(False, temperature=0), "-H", "Content-Type: application/json"))
    assert content == full["choices"][0]["message"]["content"]
    assert content == native_generate(server, render_chat(CHAT_MESSAGES), 20)["generated_text"]


def test_chat_stream_with_usage_ends_usage_then_done(server: LaunchedServer) -> None:
    # No temperature samples (TGI's rule) and the tiny model may then sample its end token before 20:
    # ignore_eos makes the 20 tokens this test counts certain (it failed so once in CI, 8 tokens).
    raw = curl("-N", f"{host_port(server)}/v1/chat/completions", "-X", "POST", "-d",
               chat_body(True, stream_options={"include_usage": True}, ignore_eos=True),
               "-H", "Content-Type: application/json")
    payloads = data_events(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert [c for c in chunks if c.get("usage")] == [chunks[-1]]
    assert chunks[-1]["choices"] == []
    prompt_tokens = token_count(server, render_chat(CHAT_MESSAGES))
    usage = chunks[-1]["usage"]
    assert 0 <= usage.pop("prompt_tokens_details")["cached_tokens"] < prompt_tokens
    assert usage == {"prompt_tokens": prompt_tokens, "completion_tokens": 20, "total_tokens": prompt_tokens + 20}
    assert len(chunks) == 21


def test_completions_stream(server: LaunchedServer) -> None:
    body = json.dumps({"model": "tgi", "prompt": "What is Deep Learning?", "max_tokens": 20, "stream": True,
                       "temperature": 0})
    raw = curl("-N", f"{host_port(server)}/v1/completions", "-X", "POST", "-d", body,
               "-H", "Content-Type: application/json")
    payloads = data_events(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == native_generate(server, "What is Deep Learning?", 20)["generated_text"]


def start_curl(server: LaunchedServer, route: str, body: str) -> subprocess.Popen:
    """A curl -N stream, returned once its first event has been printed."""
    process = subprocess.Popen(["curl", "-sN", f"{host_port(server)}{route}", "-X", "POST", "-d", body,
                                "-H", "Content-Type: application/json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith(b"data:"), (line, process.stderr.read() if process.poll() is not None else b"")
    return process


def test_ctrl_c_frees_the_slots(server: LaunchedServer) -> None:
    for _ in range(2):
        processes = [
            start_curl(server, "/generate_stream",
                       json.dumps({"inputs": "What is Deep Learning?", "parameters": {"max_new_tokens": HOLD_TOKENS}})),
            start_curl(server, "/v1/chat/completions",
                       json.dumps({"model": "tgi", "messages": CHAT_MESSAGES, "stream": True,
                                   "max_tokens": HOLD_TOKENS})),
        ]
        assert_full(server)
        for p in processes:
            p.send_signal(signal.SIGINT)  # what Ctrl-C does
        for p in processes:
            assert p.wait(timeout=10) != 0  # interrupted, not finished
            p.stdout.close()
            p.stderr.close()
        assert wait_admits(server) == [200, 200]


def test_sse_framing_is_strict(server: LaunchedServer) -> None:
    """Every block of the native stream is one `data:` line; parse_sse rejects anything else."""
    raw = curl("-N", f"{host_port(server)}/generate_stream", "-X", "POST", "-d",
               '{"inputs":"What is Deep Learning?","parameters":{"max_new_tokens":5}}',
               "-H", "Content-Type: application/json")
    assert all(e.data is not None or e.comments for e in parse_sse(raw))
