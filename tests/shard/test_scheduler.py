"""The step planner on its own: no model, no torch, requests as plain lengths."""

from __future__ import annotations

from dataclasses import dataclass

from shard.scheduler import UNLIMITED, PromptChunk, Scheduler


@dataclass
class Fake:
    input_length: int
    cached_length: int = 0
    prefill_logprobs: bool = False


def test_decoding_requests_get_one_row_each_and_their_logits() -> None:
    a, b = Fake(5, cached_length=5), Fake(3, cached_length=7)
    plan = Scheduler(64, supports_chunking=True).schedule([a, b])
    assert plan.decoding == [a, b] and plan.chunks == []
    assert plan.logits_rows == [0, 1] and plan.num_rows == 2
    assert plan.emitting == [(a, 0), (b, 1)]


def test_a_prefill_nobody_waits_for_goes_whole() -> None:
    long, short = Fake(300), Fake(20)
    plan = Scheduler(64, supports_chunking=True).schedule([long, short])
    assert plan.chunks == [PromptChunk(long, 0, 300, 0, 1), PromptChunk(short, 0, 20, 1, 1)]
    # only the last row of each prompt: it chooses the first generated token
    assert plan.logits_rows == [299, 319]
    assert plan.emitting == [(long, 0), (short, 1)]


def test_prompts_are_chunked_under_the_budget_while_others_decode() -> None:
    running, long, waiting = Fake(5, cached_length=9), Fake(300), Fake(10)
    plan = Scheduler(64, supports_chunking=True).schedule([running, long, waiting])
    assert plan.decoding == [running]
    assert plan.chunks == [PromptChunk(long, 0, 64, 1, 0)]  # the budget is spent: `waiting` waits
    assert plan.logits_rows == [0] and plan.num_rows == 65
    assert plan.emitting == [(running, 0)]  # the chunk does not end its prompt: no token for it yet


def test_requests_outside_the_step_also_make_prompts_chunked() -> None:
    long = Fake(300, cached_length=256)
    scheduler = Scheduler(32, supports_chunking=True)
    plan = scheduler.schedule([long], others_waiting=True)
    assert plan.chunks == [PromptChunk(long, 256, 32, 0, 0)]
    assert scheduler.schedule([long]).chunks == [PromptChunk(long, 256, 44, 0, 1)]
    assert scheduler.schedule([long]).chunks[0].completes_prompt


def test_the_budget_is_shared_in_order_and_a_final_chunk_gets_its_token() -> None:
    running, first, second = Fake(2, cached_length=2), Fake(40, cached_length=30), Fake(100)
    plan = Scheduler(64, supports_chunking=True).schedule([running, first, second])
    assert plan.chunks == [PromptChunk(first, 30, 10, 1, 1), PromptChunk(second, 0, 54, 2, 0)]
    assert plan.logits_rows == [0, 10]  # row 0: running; rows 1-10: first's last 10 tokens
    assert plan.emitting == [(running, 0), (first, 1)]


def test_prompt_logprobs_want_every_row_of_the_chunk() -> None:
    running, detailed = Fake(2, cached_length=2), Fake(10, prefill_logprobs=True)
    plan = Scheduler(4, supports_chunking=True).schedule([running, detailed])
    assert plan.chunks == [PromptChunk(detailed, 0, 4, 1, 4)]
    assert plan.logits_rows == [0, 1, 2, 3, 4]
    assert plan.emitting == [(running, 0)]
    last = Fake(10, cached_length=8, prefill_logprobs=True)
    plan = Scheduler(4, supports_chunking=True).schedule([running, last])
    assert plan.chunks == [PromptChunk(last, 8, 2, 1, 2)] and plan.logits_rows == [0, 1, 2]
    assert plan.emitting == [(running, 0), (last, 2)]


def test_a_runner_without_chunking_always_gets_whole_prompts() -> None:
    running, long = Fake(2, cached_length=2), Fake(300)
    scheduler = Scheduler(64, supports_chunking=False)
    assert scheduler.chunk_budget(others_waiting=True) == UNLIMITED
    assert scheduler.schedule([running, long], others_waiting=True).chunks == [PromptChunk(long, 0, 300, 1, 1)]


def test_the_plan_changes_no_request() -> None:
    requests = [Fake(5, cached_length=5), Fake(300)]
    before = [Fake(r.input_length, r.cached_length) for r in requests]
    Scheduler(64, supports_chunking=True).schedule(requests)
    assert requests == before


def test_an_empty_step_plans_nothing() -> None:
    plan = Scheduler(64, supports_chunking=True).schedule([])
    assert not plan and plan.logits_rows == [] and plan.emitting == []
