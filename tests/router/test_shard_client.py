"""The router's protobuf edge (router/shard_client.py): router types to pb.* and back, without a shard."""

from __future__ import annotations

import math
from typing import get_args

from router.shard_client import (
    FINISH_REASONS,
    batch_to_proto,
    cached_batch_from_proto,
    cached_batch_to_proto,
    step_from_proto,
)
from router.types import (
    Batch,
    CachedBatch,
    Finished,
    FinishReason,
    SamplingParameters,
    StoppingParameters,
    ValidRequest,
)
from tgi_proto import generate_pb2 as pb


def test_every_proto_finish_reason_has_the_routers_of_the_same_name() -> None:
    assert set(FINISH_REASONS) == set(pb.FinishReason.values())
    assert sorted(FINISH_REASONS.values()) == sorted(get_args(FinishReason))
    assert FINISH_REASONS[pb.FINISH_REASON_EOS_TOKEN] == "eos_token"
    assert FINISH_REASONS[pb.FINISH_REASON_STOP_SEQUENCE] == "stop_sequence"


def test_a_batch_becomes_the_shards_request() -> None:
    request = ValidRequest(
        inputs="hi", input_ids=(5, 6, 7), sampling=SamplingParameters(temperature=0.5, top_k=3, do_sample=True, seed=9),
        stopping=StoppingParameters(max_new_tokens=4, stop_sequences=("\n",), ignore_eos_token=True),
        decoder_input_details=True, top_n_tokens=2)
    unseeded = ValidRequest(inputs="x", input_ids=(1,), sampling=SamplingParameters(),
                            stopping=StoppingParameters(max_new_tokens=1))
    sent = batch_to_proto(Batch(3, {11: request, 12: unseeded}, max_tokens=9))
    assert (sent.id, sent.size, sent.max_tokens) == (3, 2, 9)
    first, second = sent.requests
    assert (first.id, first.inputs, list(first.input_ids)) == (11, "hi", [5, 6, 7])
    assert (first.parameters.temperature, first.parameters.top_k, first.parameters.seed) == (0.5, 3, 9)
    assert first.parameters.do_sample and first.prefill_logprobs and first.top_n_tokens == 2
    assert first.stopping_parameters.max_new_tokens == 4 and list(first.stopping_parameters.stop_sequences) == ["\n"]
    assert first.stopping_parameters.ignore_eos_token
    assert second.id == 12 and second.parameters.seed == 0 and not second.parameters.do_sample


def test_cached_batches_round_trip() -> None:
    batch = CachedBatch(4, (1, 2), 2, 30, 12)
    assert cached_batch_from_proto(cached_batch_to_proto(batch)) == batch


def test_a_step_answer_becomes_router_generations() -> None:
    nan = float("nan")
    response = pb.DecodeResponse(forward_ns=5, decode_ns=7, generations=[
        pb.Generation(request_id=1, tokens=pb.Tokens(ids=[42], logprobs=[-0.25], texts=[" a"], is_special=[False])),
        pb.Generation(
            request_id=2, tokens=pb.Tokens(ids=[2], logprobs=[nan], texts=["</s>"], is_special=[True]),
            prefill_tokens=pb.Tokens(ids=[1, 8], logprobs=[nan, -1.5], texts=["<s>", "x"], is_special=[True, False]),
            top_tokens=[pb.Tokens(ids=[2, 3], logprobs=[-0.125, -2.0], texts=["</s>", "y"], is_special=[True, False])],
            generated_text=pb.GeneratedText(text="done", generated_tokens=3, finish_reason=pb.FINISH_REASON_EOS_TOKEN,
                                            seed=17),
        ),
    ])
    step = step_from_proto(response, received_at=1.5)
    assert (step.forward_ns, step.sample_and_postprocess_ns, step.received_at, step.batch) == (5, 7, 1.5, None)
    plain, last = step.generations
    assert plain.request_id == 1 and tuple(plain.token) == (42, " a", -0.25, False)
    assert plain.top_tokens == () and plain.prefill == () and plain.finished is None
    assert last.token.logprob is None and last.token.special  # NaN is the shard's "no logprob"
    assert [tuple(t) for t in last.prefill] == [(1, "<s>", None, True), (8, "x", -1.5, False)]
    assert [(t.id, t.logprob) for t in last.top_tokens] == [(2, -0.125), (3, -2.0)]  # float32 on the wire
    assert last.finished == Finished("done", "eos_token", 3, 17)

    response.batch.CopyFrom(pb.CachedBatch(id=9, request_ids=[1], size=1, max_tokens=20, current_tokens=4))
    response.generations[1].generated_text.ClearField("seed")
    step = step_from_proto(response, received_at=2.0)
    assert step.batch == CachedBatch(9, (1,), 1, 20, 4)
    assert step.generations[1].finished is not None and step.generations[1].finished.seed is None
    assert not any(isinstance(t.logprob, float) and math.isnan(t.logprob) for g in step.generations
                   for t in (g.token, *g.prefill, *g.top_tokens))
