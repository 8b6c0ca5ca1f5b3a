"""tgi-bench's multi-turn scenario (bench/conversation.py): the conversations it builds, and end to end
against the fake server (tests/bench/fake_server.py), whose answers name their request and whose time to
first token grows with the prompt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.conversation import MultiTurn, chat_messages, make_system_prompt, render
from bench.prompts import estimate_tokens
from bench.report import format_table
from bench.stats import aggregate
from tests.bench.fake_server import Behaviour, FakeServer


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


def run(tmp_path: Path, target: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "results.json"
    code = main(["--target", target, "--scenario", "multi-turn", "--system-prompt-tokens", "60",
                 "--prompt-tokens", "48", "--output-tokens", "3", "--no-progress", "--error-backoff", "0",
                 "--output", str(out), *args])
    return code, json.loads(out.read_text())


def test_conversations_are_fixed_by_their_arguments() -> None:
    system = make_system_prompt(1000)
    assert system == make_system_prompt(1000) != make_system_prompt(1000, seed=1)
    assert 1000 <= estimate_tokens(system) <= 1040
    spec = MultiTurn.build(conversations=4, turns=5, system_prompt_tokens=200, user_tokens=64, warmup=2)
    assert spec == MultiTurn.build(4, 5, 200, 64, 2)
    assert len(spec.user_messages) == 20 and len(spec.warmup_messages) == 2
    assert len(set(spec.user_messages + spec.warmup_messages)) == 22  # no user message is sent twice
    assert spec.describe()["system_prompt_tokens_estimated"] == estimate_tokens(spec.system_prompt)


@pytest.mark.parametrize("template", ["chatml", "none"])
def test_each_turns_prompt_starts_the_next_ones(template: str) -> None:
    history = [("first question", " first answer"), ("second question", " second answer")]
    prompts = [render("SYS", history[:k], f"question {k}", template) for k in range(3)]
    for k in range(2):
        asked, answered = history[k]
        assert render("SYS", history[:k], asked, template) + answered in prompts[k + 1]
        assert prompts[k + 1].startswith(render("SYS", history[:k], asked, template) + answered)
    if template == "chatml":
        assert prompts[2].startswith("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nfirst question<|im_end|>")
        assert prompts[2].endswith("<|im_start|>user\nquestion 2<|im_end|>\n<|im_start|>assistant\n")
    messages = chat_messages("SYS", history, "third")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == ["first question", " first answer", "second question",
                                                    " second answer", "third"]


def test_the_table_names_each_turn() -> None:
    levels = [aggregate("srv", 3, [], 0.0, 1.0) for _ in range(3)]
    for turn, level in zip((1, 2, 0), levels, strict=True):
        level.turn = turn
    header, _, *rows = format_table(levels).splitlines()
    assert header.split()[:4] == ["target", "conc", "turn", "prompt"]
    assert [row.split()[2] for row in rows[:3]] == ["1", "2", "all"]
    assert "turn" not in format_table([aggregate("srv", 3, [], 0.0, 1.0)]).splitlines()[0]


def test_openai_chat_history_grows_with_the_servers_answers(fake: FakeServer, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fake.behaviour = Behaviour(ttft=0.01, itl=0.002, tag_answers=True, ttft_per_1k_chars=0.5)
    code, doc = run(tmp_path, f"fake={fake.url},api=openai-chat", "--conversations", "3", "--turns", "4")
    assert code == 0
    assert doc["scenario"] == {"name": "multi-turn", "conversations": 3, "turns": 4,
                               "system_prompt_tokens_estimated": doc["scenario"]["system_prompt_tokens_estimated"],
                               "warmup_requests": 1}
    levels = doc["levels"]
    assert [lv["turn"] for lv in levels] == [1, 2, 3, 4, 0]
    assert all(lv["concurrency"] == 3 and lv["errors"] == {} for lv in levels)
    assert [lv["ok"] for lv in levels] == [3, 3, 3, 3, 12]
    assert [lv["ttft_s"]["count"] for lv in levels] == [3, 3, 3, 3, 12]
    assert levels[-1]["output_tokens"] == 36 and levels[-1]["output_tokens_per_s"] > 0
    # the fake's first token waits longer for a longer prompt: TTFT grows turn by turn
    p50 = [lv["ttft_s"]["p50"] for lv in levels[:4]]
    assert p50 == sorted(p50) and p50[0] < p50[-1]

    # what was sent: a probe without the system prompt, one warm-up, then 3 x 4 turns
    sent = [b for b in fake.bodies if b["messages"][0]["role"] == "system"]
    assert len(fake.bodies) == len(sent) + 1 and len(sent) == 13
    assert len({b["messages"][0]["content"] for b in sent}) == 1  # one system prompt shared by all
    assert sorted(len(b["messages"]) for b in sent) == [2] * 4 + [4] * 3 + [6] * 3 + [8] * 3
    assert all(b["max_tokens"] == 3 and b["ignore_eos"] is True and b["stream"] is True for b in sent)
    reply = {i: "".join(f" r{i + 1}t{k}" for k in (1, 2, 3)) for i in range(len(fake.bodies))}
    for body in sent:
        messages = body["messages"]
        if len(messages) > 2:  # its previous turn was sent before it, and its answer is carried here
            previous = next(i for i, b in enumerate(fake.bodies) if b.get("messages") == messages[:-2])
            assert messages[-2] == {"role": "assistant", "content": reply[previous]}
    table = capsys.readouterr().out
    assert "turn" in table and " all " in table


def test_tgi_chatml_prompts_extend_the_previous_turn(fake: FakeServer, tmp_path: Path) -> None:
    fake.behaviour = Behaviour(ttft=0.005, itl=0.001, tag_answers=True)
    code, doc = run(tmp_path, f"fake={fake.url},api=tgi", "--conversations", "2", "--turns", "3",
                    "--prompt-template", "chatml", "--warmup", "0")
    assert code == 0
    assert [(lv["turn"], lv["ok"], lv["prompt_tokens_mean"]) for lv in doc["levels"]] == [
        (1, 2, 7), (2, 2, 7), (3, 2, 7), (0, 6, 7)]
    inputs = [b["inputs"] for b in fake.bodies[1:]]  # after the probe
    assert len(inputs) == 6 and all(i.startswith("<|im_start|>system\n") for i in inputs)
    for number, text in enumerate(inputs, start=2):
        if text.count("<|im_start|>user") == 1:
            continue
        # the previous turn of the same conversation: the longest earlier prompt that this one extends
        before = max((i for i, b in enumerate(fake.bodies) if i != number - 1 and text.startswith(b["inputs"])
                      and b["inputs"].startswith("<|im_start|>system")), key=lambda i: len(fake.bodies[i]["inputs"]))
        answer = "".join(f" r{before + 1}t{k}" for k in (1, 2, 3))
        assert text.startswith(fake.bodies[before]["inputs"] + answer + "<|im_end|>\n<|im_start|>user\n")


def test_a_failed_turn_ends_its_conversation(fake: FakeServer, tmp_path: Path) -> None:
    # user messages are questions 1..6 (conversation c, turn t: number 3c + t + 1); 5 is refused, so the
    # second conversation ends after its first turn
    fake.behaviour = Behaviour(ttft=0.005, itl=0.001, reject_429_every=5)
    code, doc = run(tmp_path, f"fake={fake.url},api=openai-chat", "--conversations", "2", "--turns", "3")
    assert code == 0
    assert [(lv["turn"], lv["requests"], lv["ok"]) for lv in doc["levels"]] == [(1, 2, 2), (2, 2, 1), (3, 1, 1),
                                                                                (0, 5, 4)]
    assert doc["levels"][1]["errors"] == {"http_429": 1}


def test_sweep_options_are_refused(fake: FakeServer, tmp_path: Path) -> None:
    for option in (["--concurrency", "2"], ["--duration", "5"], ["--requests-per-level", "4"]):
        with pytest.raises(SystemExit) as exited:
            run(tmp_path, f"fake={fake.url},api=tgi", *option)
        assert exited.value.code == 2
