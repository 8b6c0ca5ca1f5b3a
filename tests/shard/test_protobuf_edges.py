"""shard/server.py's conversions: protobuf in, the shard's plain records (shard/types.py) out, and back."""

from __future__ import annotations

import math

import pytest

from common.sampling import SamplingParameters
from shard.sampling import RequestSampler
from shard.server import cached_batch_to_pb, generation_to_pb, request_from_pb, sampling_parameters_from_pb
from shard.stopping import FinishReason
from shard.types import CachedBatch, GeneratedText, Generation, Request, Tokens
from tgi_proto import generate_pb2


def test_sampling_parameters_map_unset_floats_to_neutral() -> None:
    params = sampling_parameters_from_pb(generate_pb2.NextTokenChooserParameters())
    # The wire has no unset seed: 0 comes back as 0 (a greedy request draws nothing with it anyway).
    assert params == SamplingParameters(seed=0)
    proto = generate_pb2.NextTokenChooserParameters(
        temperature=0.5,
        top_k=10,
        top_p=0.9,
        typical_p=0.8,
        do_sample=True,
        seed=2**64 - 1,
        repetition_penalty=1.2,
        frequency_penalty=-0.5,
        presence_penalty=0.25,
    )
    params = sampling_parameters_from_pb(proto)
    assert params.temperature == pytest.approx(0.5)
    assert (params.top_k, params.do_sample, params.seed) == (10, True, 2**64 - 1)
    assert params.top_p == pytest.approx(0.9)
    assert params.typical_p == pytest.approx(0.8)
    assert params.repetition_penalty == pytest.approx(1.2)
    assert params.frequency_penalty == pytest.approx(-0.5)
    assert params.presence_penalty == pytest.approx(0.25)
    RequestSampler(params).next_uniform()  # a u64 seed is accepted


def test_request_from_pb_keeps_every_field() -> None:
    proto = generate_pb2.Request(
        id=7, inputs="hi", input_ids=[1, 2, 3], truncate=2, prefill_logprobs=True, top_n_tokens=4,
        parameters=generate_pb2.NextTokenChooserParameters(temperature=0.7),
        stopping_parameters=generate_pb2.StoppingCriteriaParameters(max_new_tokens=9, stop_sequences=["x", "yz"],
                                                                    ignore_eos_token=True),
    )
    request = request_from_pb(proto)
    assert request == Request(id=7, input_ids=[1, 2, 3], inputs="hi", truncate=2,
                              parameters=sampling_parameters_from_pb(proto.parameters), max_new_tokens=9,
                              stop_sequences=("x", "yz"), ignore_eos_token=True, top_n_tokens=4, prefill_logprobs=True)


def test_generation_to_pb_sets_optional_fields_only_when_present() -> None:
    tokens = Tokens(ids=[5], logprobs=[-0.5], texts=["a"], is_special=[False])
    plain = generation_to_pb(Generation(request_id=3, tokens=tokens))
    assert plain.request_id == 3 and list(plain.tokens.ids) == [5] and list(plain.tokens.texts) == ["a"]
    assert not plain.HasField("generated_text") and not plain.HasField("prefill_tokens") and not plain.top_tokens
    assert plain.cached_prompt_tokens == 0
    assert generation_to_pb(Generation(request_id=3, tokens=tokens, cached_prompt_tokens=32)).cached_prompt_tokens == 32

    prompt = Tokens(ids=[1, 2], logprobs=[math.nan, -1.0], texts=["x", "y"], is_special=[True, False])
    done = generation_to_pb(Generation(
        request_id=3, tokens=tokens, prefill_tokens=prompt, top_tokens=[tokens],
        generated_text=GeneratedText(text="a", generated_tokens=1, finish_reason=FinishReason.STOP_SEQUENCE, seed=11)))
    assert list(done.prefill_tokens.ids) == [1, 2] and math.isnan(done.prefill_tokens.logprobs[0])
    assert list(done.prefill_tokens.is_special) == [True, False]
    assert [list(t.ids) for t in done.top_tokens] == [[5]]
    assert done.generated_text.finish_reason == generate_pb2.FINISH_REASON_STOP_SEQUENCE
    assert (done.generated_text.text, done.generated_text.generated_tokens, done.generated_text.seed) == ("a", 1, 11)
    greedy = generation_to_pb(Generation(request_id=3, tokens=tokens, generated_text=GeneratedText(
        text="a", generated_tokens=1, finish_reason=FinishReason.LENGTH)))
    assert not greedy.generated_text.HasField("seed")


def test_cached_batch_to_pb() -> None:
    batch = cached_batch_to_pb(CachedBatch(id=4, request_ids=[1, 2], size=2, max_tokens=30, current_tokens=12))
    assert (batch.id, list(batch.request_ids), batch.size) == (4, [1, 2], 2)
    assert (batch.max_tokens, batch.current_tokens) == (30, 12)
