"""tgi-bench end to end against a fake SSE server (tests/bench/fake_server.py): counts, errors, JSON and
chart. Timed values are only checked from below where an injected delay cannot be beaten (TTFT,
end-to-end), or by ordering."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cli import main
from tests.bench.fake_server import Behaviour, FakeServer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


def run(tmp_path: Path, *args: str, chart: bool = False) -> tuple[int, dict]:
    out = tmp_path / "results.json"
    argv = [*args, "--output", str(out), "--no-progress", "--error-backoff", "0", "--prompt-tokens", "32",
            "--num-prompts", "64"]
    if chart:
        argv += ["--chart", str(tmp_path / "chart.png")]
    code = main(argv)
    return code, json.loads(out.read_text())


def test_tgi_native_sweep(fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake.behaviour = Behaviour(ttft=0.04, itl=0.01)
    code, doc = run(tmp_path, "--target", f"fake={fake.url},api=tgi", "--concurrency", "1,3",
                    "--requests-per-level", "6", "--output-tokens", "5", chart=True)
    assert code == 0
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 3]
    for level in doc["levels"]:
        assert level["target"] == "fake"
        assert level["requests"] == level["ok"] == 6
        assert level["errors"] == {}
        assert level["output_tokens"] == 30  # exactly 5 per request
        assert level["tokens_per_request"] == {"mean": 5.0, "min": 5.0, "max": 5.0}
        assert level["short_requests"] == 0
        assert level["prompt_tokens_mean"] == 7  # from details.input_length
        assert level["finish_reasons"] == {"length": 6}
        # one TTFT per request, 4 gaps per request
        assert level["ttft_s"]["count"] == 6
        assert level["itl_s"]["count"] == 6 * 4
        # injected delays bound TTFT and end-to-end latency from below (not single gaps: a late
        # arrival shortens the next gap)
        assert level["ttft_s"]["min"] >= 0.035
        assert level["e2e_s"]["min"] >= 0.04 + 4 * 0.01 - 0.005
        assert level["itl_s"]["min"] > 0
        assert level["ttft_s"]["p50"] <= level["ttft_s"]["p99"] <= level["ttft_s"]["max"]
        assert level["itl_s"]["p50"] <= level["itl_s"]["p99"]
        assert level["e2e_s"]["min"] >= level["ttft_s"]["min"]
        assert level["output_tokens_per_s"] > 0 and level["requests_per_s"] > 0
        assert level["output_tokens_per_s"] == pytest.approx(level["output_tokens"] / level["duration_s"])
    # closed loop: three workers finish six requests sooner than one does
    assert doc["levels"][1]["duration_s"] < doc["levels"][0]["duration_s"]

    # what was sent: native parameters, ignore_eos, the prompts in order with no repeats
    body = fake.bodies[-1]
    assert body["parameters"]["max_new_tokens"] == 5
    assert body["parameters"]["ignore_eos"] is True
    assert body["parameters"]["details"] is True
    numbers = [FakeServer.question_number(b["inputs"]) for b in fake.bodies]
    # probe 1, then per level: warmup (1 per worker) + 6 measured
    assert len(numbers) == 1 + (1 + 6) + (3 + 6)
    assert sorted(numbers) == list(range(1, len(numbers) + 1))

    # the JSON document
    assert doc["tool"] == "tgi-bench" and doc["schema_version"] == 1
    for key in ("platform", "cpu_model", "cpu_count", "python"):
        assert key in doc["machine"]
    assert doc["machine"]["cpu_count"] >= 1
    assert doc["date"] and doc["args"]["concurrency"] == [1, 3] and doc["args"]["output_tokens"] == 5
    (target,) = doc["targets"]
    assert target["name"] == "fake" and target["api"] == "tgi"
    assert target["url"] == fake.url + "/generate_stream"
    assert target["ignore_eos_sent"] is True and target["error"] is None
    assert target["server_info"]["info"]["model_id"] == "fake/model"
    assert "itl" in doc["notes"]

    chart = tmp_path / "chart.png"
    assert chart.read_bytes()[:8] == PNG_MAGIC and chart.stat().st_size > 5000

    printed = capsys.readouterr().out
    assert "TTFT p50" in printed and "fake" in printed


def test_openai_chat_counts_batched_chunks_by_usage(fake: FakeServer, tmp_path: Path) -> None:
    # 9 tokens: the first alone, then chunks of 4, 4: three token events per request
    fake.behaviour = Behaviour(ttft=0.02, itl=0.02, tokens_per_chunk=4, send_done=False)
    code, doc = run(tmp_path, "--target", f"chat={fake.url}/v1/chat/completions", "--concurrency", "2",
                    "--requests-per-level", "4", "--output-tokens", "9", "--warmup", "0")
    assert code == 0
    (level,) = doc["levels"]
    assert level["ok"] == 4
    assert level["output_tokens"] == 36  # from usage, not the 3 chunks
    assert level["prompt_tokens_mean"] == 9
    # the role-only chunk is not a token; two gaps per request (each divided by 4 tokens: see the
    # unit tests for the arithmetic)
    assert level["itl_s"]["count"] == 4 * 2
    assert level["tpot_s"]["count"] == 4
    assert level["e2e_s"]["min"] >= 0.02 + 2 * 0.02 - 0.005
    (target,) = doc["targets"]
    assert target["api"] == "openai-chat" and target["model"] == "fake-model"  # from /v1/models
    body = fake.bodies[-1]
    assert body["model"] == "fake-model" and body["stream"] is True and body["max_tokens"] == 9
    assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True
    assert body["temperature"] == 0.0 and body["messages"][0]["role"] == "user"


@pytest.mark.parametrize("api", ["openai-chat", "openai-completions"])
def test_openai_empty_text_chunks_are_tokens(fake: FakeServer, tmp_path: Path, api: str) -> None:
    # one token per chunk, every 3rd with its text held back: still one token event each
    fake.behaviour = Behaviour(ttft=0.001, itl=0.001, held_back_every=3)
    code, doc = run(tmp_path, "--target", f"o={fake.url},api={api}", "--concurrency", "1",
                    "--requests-per-level", "3", "--output-tokens", "7", "--warmup", "0", "--save-requests")
    assert code == 0
    (level,) = doc["levels"]
    assert level["output_tokens"] == 21
    assert [r["token_events"] for r in level["request_records"]] == [7, 7, 7]
    assert level["itl_s"]["count"] == 3 * 6


def test_errors_counted_by_kind(fake: FakeServer, tmp_path: Path) -> None:
    # prompts are numbered 1.. in order: probe = 1, measured = 2..10 (no warmup)
    fake.behaviour = Behaviour(ttft=0.001, itl=0.001, reject_429_every=3, stream_error_every=5)
    code, doc = run(tmp_path, "--target", f"t={fake.url},api=tgi", "--concurrency", "2",
                    "--requests-per-level", "9", "--output-tokens", "4", "--warmup", "0", "--save-requests")
    assert code == 0
    (level,) = doc["levels"]
    assert level["requests"] == 9
    # 429 for 3, 6, 9; an error event mid-stream for 5, 10
    assert level["errors"] == {"http_429": 3, "stream_error:generation": 2}
    assert level["ok"] == 4 and level["failed"] == 5
    assert level["output_tokens"] == 16  # failed requests' tokens are not counted
    rows = level["request_records"]
    assert len(rows) == 9
    assert sorted(r["error"] or "ok" for r in rows) == ["http_429"] * 3 + ["ok"] * 4 + ["stream_error:generation"] * 2
    assert all(r["output_tokens"] == 4 and r["ttft_s"] > 0 for r in rows if r["error"] is None)
    assert all(r["start_s"] >= 0 for r in rows)
    assert any("overloaded" in (r["error_detail"] or "") for r in rows)


def test_openai_completions_errors_and_incomplete(fake: FakeServer, tmp_path: Path) -> None:
    fake.behaviour = Behaviour(ttft=0.001, itl=0.001, reject_429_every=4, stream_error_every=7)
    code, doc = run(tmp_path, "--target", f"c={fake.url},api=openai-completions", "--concurrency", "1",
                    "--requests-per-level", "8", "--output-tokens", "3", "--warmup", "0", "--keep-alive")
    assert code == 0
    (level,) = doc["levels"]
    # measured prompts 2..9: 429 for 4, 8; error event for 7
    assert level["errors"] == {"http_429": 2, "stream_error:generation": 1}
    assert level["output_tokens"] == 5 * 3


def test_refused_ignore_eos_is_dropped_and_short_outputs_reported(
        fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # like transformers serve: ignore_eos is an unexpected field; the model stops after 3 tokens
    fake.behaviour = Behaviour(refuse_ignore_eos=True, eos_after=3, ttft=0.001, itl=0.001)
    code, doc = run(tmp_path, "--target", f"hf={fake.url},api=openai-completions,model=m1",
                    "--concurrency", "1", "--requests-per-level", "3", "--output-tokens", "6")
    assert code == 0
    (target,) = doc["targets"]
    assert target["ignore_eos_sent"] is False
    assert target["model"] == "m1"
    assert any("ignore_eos" in note for note in target["notes"])
    (level,) = doc["levels"]
    assert level["ok"] == 3 and level["errors"] == {}
    assert level["tokens_per_request"]["mean"] == 3.0
    assert level["short_requests"] == 3
    assert level["finish_reasons"] == {"stop": 3}
    assert "ignore_eos" not in fake.bodies[-1]
    assert "ended before 6 tokens" in capsys.readouterr().out


def test_ignore_eos_off_is_not_sent(fake: FakeServer, tmp_path: Path) -> None:
    fake.behaviour = Behaviour(ttft=0.001, itl=0.001)
    code, doc = run(tmp_path, "--target", f"a={fake.url},api=tgi,ignore_eos=off", "--concurrency", "1",
                    "--requests-per-level", "2", "--output-tokens", "2",
                    "--extra-body", 'a={"parameters": {"top_k": 5}}')
    assert code == 0
    assert all("ignore_eos" not in b["parameters"] for b in fake.bodies)
    assert all(b["parameters"]["top_k"] == 5 and b["parameters"]["max_new_tokens"] == 2 for b in fake.bodies)
    assert doc["targets"][0]["ignore_eos_sent"] is False


def test_two_targets_one_unreachable(fake: FakeServer, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again before the run: nothing listens there
    fake.behaviour = Behaviour(ttft=0.001, itl=0.001)
    code, doc = run(tmp_path, "--target", f"dead=http://127.0.0.1:{dead},api=tgi",
                    "--target", f"alive={fake.url},api=openai-chat", "--concurrency", "1,2",
                    "--requests-per-level", "2", "--output-tokens", "2", chart=True)
    assert code == 1
    dead_target, alive_target = doc["targets"]
    assert dead_target["error"] and "ClientConnectorError" in dead_target["error"]
    assert alive_target["error"] is None
    assert [(lv["target"], lv["concurrency"]) for lv in doc["levels"]] == [("alive", 1), ("alive", 2)]
    assert (tmp_path / "chart.png").read_bytes()[:8] == PNG_MAGIC


def test_duration_mode_with_progress_bar(fake: FakeServer, tmp_path: Path) -> None:
    fake.behaviour = Behaviour(ttft=0.005, itl=0.002)
    out = tmp_path / "r.json"
    code = main(["--target", f"d={fake.url}", "--concurrency", "2", "--duration", "0.3", "--output-tokens", "3",
                 "--output", str(out), "--prompt-tokens", "16", "--num-prompts", "8"])
    assert code == 0
    (level,) = json.loads(out.read_text())["levels"]
    assert level["requests"] >= 2 and level["ok"] == level["requests"]
    assert level["duration_s"] >= 0.25  # sending stops at 0.3 s; the last request ends around then
    assert level["output_tokens"] == 3 * level["ok"]


def test_bad_arguments_exit_with_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--target", "nourl"], ["--target", "x=ftp://h"], ["--target", "x=http://h,api=grpc"],
                 ["--target", "x=http://h/v1/completions,api=tgi"], ["--target", "x=http://h", "--concurrency", "0"],
                 ["--target", "x=http://h", "--target", "x=http://g"],
                 ["--target", "x=http://h", "--extra-body", "y={}"], ["--target", "x=http://h", "--save-requests"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv


def test_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--target" in done.stdout and "--concurrency" in done.stdout
