"""Several tokens of one request in one step (--speculate): one stream event each, in order, and the
acceptance counters."""

from __future__ import annotations

import time

from router.batcher import Batcher, SchedulerConfig
from router.shard_client import step_from_proto
from router.types import Finished, Generation, StepResult
from tests.router.fake_shard import FakeShard
from tests.router.test_batcher import collect, request, run_with
from tgi_proto import generate_pb2 as pb


def test_a_generation_of_several_tokens_becomes_one_router_generation_per_token() -> None:
    nan = float("nan")
    response = pb.DecodeResponse(speculative_draft_tokens=4, speculative_accepted_tokens=2, generations=[
        pb.Generation(request_id=7, cached_prompt_tokens=16,
                      prefill_tokens=pb.Tokens(ids=[1, 2], logprobs=[nan, -1.0], texts=["a", "b"],
                                               is_special=[False, False]),
                      tokens=pb.Tokens(ids=[10, 11, 12], logprobs=[-0.1, -0.2, nan], texts=[" x", " y", "</s>"],
                                       is_special=[False, False, True]),
                      top_tokens=[pb.Tokens(ids=[10, 5], logprobs=[-0.1, -3.0], texts=[" x", " q"],
                                            is_special=[False, False]),
                                  pb.Tokens(ids=[11], logprobs=[-0.2], texts=[" y"], is_special=[False]),
                                  pb.Tokens(ids=[12], logprobs=[-0.3], texts=["</s>"], is_special=[True])],
                      generated_text=pb.GeneratedText(text=" x y", generated_tokens=5,
                                                      finish_reason=pb.FINISH_REASON_EOS_TOKEN)),
        pb.Generation(request_id=8, tokens=pb.Tokens(ids=[3], logprobs=[-0.5], texts=["c"], is_special=[False])),
    ])
    step = step_from_proto(response, 1.0)
    assert (step.draft_tokens, step.accepted_tokens) == (4, 2)
    first, second, third, other = step.generations
    assert [g.request_id for g in step.generations] == [7, 7, 7, 8]
    assert [g.token.id for g in (first, second, third)] == [10, 11, 12]
    assert (third.token.text, third.token.special, third.token.logprob) == ("</s>", True, None)
    assert [[t.id for t in g.top_tokens] for g in (first, second, third)] == [[10, 5], [11], [12]]
    assert [(t.id, t.logprob) for t in first.prefill] == [(1, None), (2, -1.0)]
    assert second.prefill == () and third.prefill == ()
    assert (first.cached_prompt_tokens, second.cached_prompt_tokens) == (16, 0)
    assert first.finished is None and second.finished is None
    assert third.finished == Finished(" x y", "eos_token", 5, None)
    assert other.token.id == 3


class SpeculatingShard(FakeShard):
    """Every decode step gives each request up to three tokens, as a speculating shard would."""

    def _answer(self, batch_id, requests) -> StepResult:
        if not self.calls or self.calls[-1][0] != "decode":
            return super()._answer(batch_id, requests)
        generations: list[Generation] = []
        for _ in range(3):
            running = [r for r in requests if self.generated.get(r[0], 0) < r[1]]
            generations += self._step(running)
        generations.sort(key=lambda g: g.request_id)  # a request's tokens stay in order (stable sort)
        return StepResult(generations, self._store(batch_id, requests), 0, 0, time.monotonic(),
                          draft_tokens=3 * len(requests), accepted_tokens=2 * len(requests))


async def test_each_token_of_a_step_is_its_own_event_with_the_next_index() -> None:
    shard = SpeculatingShard()
    batcher = Batcher(shard, SchedulerConfig(max_batch_prefill_tokens=100, max_batch_total_tokens=10_000,
                                             block_size=16))  # type: ignore[arg-type]
    a, b = batcher.submit(request(8)), batcher.submit(request(5))
    events_a = await run_with(batcher, collect(a))
    events_b = await run_with(batcher, collect(b))
    assert [e.index for e in events_a] == list(range(1, 9))
    assert [e.token.text for e in events_a] == [f"t{i} " for i in range(1, 9)]
    assert [e.index for e in events_b] == list(range(1, 6))
    assert events_a[-1].finished is not None and all(e.finished is None for e in events_a[:-1])
    assert [c[0] for c in shard.calls] == ["prefill", "decode", "decode", "decode"]
    metrics = batcher.metrics.render().decode()
    assert "tgi_py_speculative_draft_tokens 15.0" in metrics  # 2 requests, then 2, then 1: 3 each
    assert "tgi_py_speculative_accepted_tokens 10.0" in metrics
