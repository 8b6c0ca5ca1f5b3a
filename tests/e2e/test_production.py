"""Production behaviour on a real tgi-launch: auth, CORS, drain on SIGTERM, liveness, logs, sockets."""

from __future__ import annotations

import glob
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import requests

from tests.e2e.procs import children_of, cmdline, wait_gone
from tests.e2e.server import launch

SMALL = ("--max-input-tokens", "64", "--max-total-tokens", "2048")


def test_api_key_guards_every_route_but_health(tiny_llama: Path) -> None:
    server = launch(tiny_llama, *SMALL, "--api-key", "s3cret")
    try:
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
        assert "s3cret" not in " ".join(cmdline(p) for p in children_of(server.process.pid))
        for method, route in [("POST", "/generate"), ("POST", "/generate_stream"), ("POST", "/v1/completions"),
                              ("GET", "/info"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/tokenize")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = requests.request(method, server.url + route, json=body, headers=headers, timeout=30)
                assert r.status_code == 401, (route, headers, r.text)
                assert r.json()["error_type"] == "unauthorized"
        ok = requests.post(server.url + "/generate", json=body, headers={"Authorization": "Bearer s3cret"},
                           timeout=30)
        assert ok.status_code == 200
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
        assert requests.get(server.url + "/live", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0, server.log()


def test_cors_preflight_and_headers_on_streams(tiny_llama: Path) -> None:
    server = launch(tiny_llama, *SMALL, "--cors-allow-origin", "https://app.example")
    try:
        preflight = requests.options(server.url + "/generate_stream", timeout=10, headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
        streamed = requests.post(server.url + "/generate_stream", json=body, timeout=30,
                                 headers={"Origin": "https://app.example"})
        assert streamed.headers["Access-Control-Allow-Origin"] == "https://app.example"
        other = requests.post(server.url + "/generate", json=body, timeout=30, headers={"Origin": "https://evil.example"})
        assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
    finally:
        assert server.stop() == 0, server.log()


def test_shard_sockets_are_owner_only(tiny_llama: Path) -> None:
    server = launch(tiny_llama, *SMALL)
    try:
        sockets = glob.glob(server.uds_path + "-*")
        assert sockets
        for path in sockets:
            mode = os.stat(path).st_mode
            assert stat.S_ISSOCK(mode) and mode & 0o077 == 0, oct(mode)
    finally:
        assert server.stop() == 0, server.log()


def read_stream(server_url: str, body: dict, out: dict) -> None:
    events = []
    try:
        with requests.post(server_url + "/generate_stream", json=body, stream=True, timeout=120) as response:
            out["status"] = response.status_code
            for raw in response.iter_lines():
                if raw.startswith(b"data:"):
                    events.append(json.loads(raw[5:]))
                    out.setdefault("first_at", time.monotonic())
    except requests.RequestException as exc:
        out["exception"] = repr(exc)
    out["events"] = events


def reading_in_background(server_url: str, body: dict) -> tuple[threading.Thread, dict]:
    """A stream read on a thread; returns once its first event has arrived."""
    out: dict = {}
    reader = threading.Thread(target=read_stream, args=(server_url, body, out))
    reader.start()
    while "first_at" not in out and reader.is_alive():
        time.sleep(0.01)
    return reader, out


def test_sigterm_drains_in_flight_streams_then_exits_zero(tiny_llama: Path) -> None:
    server = launch(tiny_llama, *SMALL)
    children = children_of(server.process.pid)
    reader, out = reading_in_background(server.url, {"inputs": "Hello", "parameters": {"max_new_tokens": 600}})
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # While draining: no new work, and readiness is off so a load balancer stops sending any.
    refused = requests.post(server.url + "/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}},
                            timeout=10)
    assert refused.status_code == 503 and refused.json()["error_type"] == "unavailable"
    assert requests.get(server.url + "/health", timeout=10).status_code == 503
    reader.join(timeout=120)
    assert server.process.wait(timeout=120) == 0, server.log()
    events = out["events"]
    assert len(events) == 600 and events[-1]["generated_text"] is not None, events[-1:]
    assert wait_gone(children) == []


def test_drain_timeout_ends_the_rest_with_an_error_event(tiny_llama: Path) -> None:
    server = launch(tiny_llama, *SMALL, "--graceful-termination-timeout", "1")
    reader, out = reading_in_background(server.url, {"inputs": "Hello", "parameters": {"max_new_tokens": 1900}})
    server.process.send_signal(signal.SIGTERM)
    reader.join(timeout=60)
    assert server.process.wait(timeout=60) == 0, server.log()
    assert out["events"][-1].get("error_type") == "unavailable", out["events"][-2:]
    assert len(out["events"]) < 1900


def test_liveness_fails_while_a_shard_hangs_and_recovers(tiny_llama: Path) -> None:
    server = launch(tiny_llama, *SMALL, "--liveness-timeout", "1")
    shard = next(p for p in children_of(server.process.pid) if "shard.cli" in cmdline(p))
    try:
        assert requests.get(server.url + "/live", timeout=10).status_code == 200
        os.kill(shard, signal.SIGSTOP)
        out: dict = {}
        reader = threading.Thread(target=read_stream, args=(server.url, {
            "inputs": "Hello", "parameters": {"max_new_tokens": 5}}, out))
        reader.start()
        deadline = time.monotonic() + 20
        live = requests.get(server.url + "/live", timeout=10)
        while live.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            live = requests.get(server.url + "/live", timeout=10)
        assert live.status_code == 503 and live.json()["error_type"] == "unhealthy"
        assert requests.get(server.url + "/health", timeout=30).status_code == 503
        os.kill(shard, signal.SIGCONT)
        reader.join(timeout=60)
        assert len(out["events"]) == 5
        assert requests.get(server.url + "/live", timeout=10).status_code == 200
    finally:
        os.kill(shard, signal.SIGCONT)
        assert server.stop() == 0, server.log()


def test_json_output_logs_one_structured_line_per_request(tiny_llama: Path) -> None:
    server = launch(tiny_llama, *SMALL, "--json-output")
    try:
        server.post("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
        server.post("/generate", {"inputs": "", "parameters": {"max_new_tokens": 3}})
        time.sleep(0.3)
    finally:
        assert server.stop() == 0
    records = []
    for line in server.output:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    done = [r for r in records if r.get("generated_tokens") == 3]
    assert len(done) == 1, records[-5:]
    for key in ("timestamp", "level", "input_tokens", "queue_ms", "inference_ms", "time_per_token_ms"):
        assert key in done[0]
    assert any(r.get("error_type") == "validation" for r in records)
    # the shards log JSON lines too (their start-up and per-step lines), not text among the JSON
    shard_records = [r for r in records if r.get("target", "").startswith("shard")]
    assert shard_records and all({"timestamp", "level", "message"} <= r.keys() for r in shard_records)
    assert not [line for line in server.output if " INFO shard" in line], "a shard logged plain text"
    steps = [r for r in shard_records if "batch_size" in r]  # the per-step line, its figures as fields
    assert steps and all(r["step_ms"] >= r["forward_ms"] > 0 and r["batch_size"] >= 1 for r in steps)
