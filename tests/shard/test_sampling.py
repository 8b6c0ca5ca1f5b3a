"""Token choice: penalties, warpers, seeded sampling, logprobs and top tokens."""

from __future__ import annotations

import math

import pytest
import torch

from common.sampling import SamplingParameters
from shard.sampling import ChosenTokens, RequestSampler, choose_tokens, prompt_token_logprobs


def choose(
    logits: torch.Tensor,
    params: list[SamplingParameters],
    histories: list[list[int]] | None = None,
    top_n: int | list[int] = 0,
    samplers: list[RequestSampler] | None = None,
) -> ChosenTokens:
    samplers = samplers or [RequestSampler(p) for p in params]
    histories = histories or [[] for _ in params]
    top_ns = top_n if isinstance(top_n, list) else [top_n] * len(params)
    return choose_tokens(logits, samplers, histories, top_ns)


def processed_logprobs(logits: list[float], params: SamplingParameters, history: list[int] = ()) -> list[float]:
    """Every token's logprob after processing (top_n = V exposes the whole row), in vocab order."""
    vocab = len(logits)
    out = choose(torch.tensor([logits]), [params], [list(history)], top_n=vocab)
    ids, values = out.top_tokens[0]
    row = [float("-inf")] * vocab
    for token_id, value in zip(ids, values, strict=True):
        row[token_id] = value
    return row


def kept(logits: list[float], params: SamplingParameters) -> set[int]:
    return {i for i, v in enumerate(processed_logprobs(logits, params)) if v != float("-inf")}


def log_softmax(values: list[float]) -> list[float]:
    return torch.log_softmax(torch.tensor(values, dtype=torch.float64), dim=-1).tolist()


def test_greedy_is_argmax_with_log_softmax_logprob() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    out = choose(logits, [SamplingParameters()] * 4)
    assert out.ids == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1).gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
    assert out.logprobs == pytest.approx(expected.tolist())
    assert out.top_tokens == [([], [])] * 4


def test_caller_logits_are_not_modified() -> None:
    logits = torch.tensor([[1.0, 2.0, -3.0, 0.5]])
    before = logits.clone()
    params = SamplingParameters(repetition_penalty=2.0, temperature=0.5, top_k=2, do_sample=True)
    choose(logits, [params], [[0, 2]])
    assert torch.equal(logits, before)


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = [2.0, -1.0, 0.5, 3.0]
    got = processed_logprobs(logits, SamplingParameters(repetition_penalty=2.0), history=[0, 1, 1])
    # Tokens 0 and 1 were seen: 2.0 / 2 and -1.0 * 2; the others keep their logits.
    assert got == pytest.approx(log_softmax([1.0, -2.0, 0.5, 3.0]), abs=1e-6)


def test_frequency_and_presence_penalties() -> None:
    logits = [0.0, 0.0, 0.0, 0.0]
    params = SamplingParameters(frequency_penalty=0.5, presence_penalty=0.25)
    got = processed_logprobs(logits, params, history=[1, 1, 2])
    # Token 1: 2 * 0.5 + 0.25; token 2: 1 * 0.5 + 0.25.
    assert got == pytest.approx(log_softmax([0.0, -1.25, -0.75, 0.0]), abs=1e-6)


def test_penalties_change_the_greedy_choice() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    params = [SamplingParameters(repetition_penalty=1.5)]
    assert choose(logits, params, [[0]]).ids == [1]
    samplers = [RequestSampler(p) for p in params]
    assert choose_tokens(logits, samplers, [[0, 0]], [0]).ids == [1]


def test_penalties_only_touch_their_own_row() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 30)
    params = [
        SamplingParameters(),
        SamplingParameters(repetition_penalty=3.0, frequency_penalty=1.0),
        SamplingParameters(),
    ]
    out = choose(logits, params, [[1, 2, 3], [4, 5], [6]], top_n=30)
    for row in (0, 2):
        ids, values = out.top_tokens[row]
        expected = torch.log_softmax(logits[row], -1)[ids]
        assert torch.equal(torch.tensor(values), expected)


def test_temperature_sharpens() -> None:
    logits = [1.0, 2.0, 3.0]
    cold = processed_logprobs(logits, SamplingParameters(temperature=0.5))
    assert cold == pytest.approx(log_softmax([2.0, 4.0, 6.0]), abs=1e-6)
    assert max(cold) > max(log_softmax(logits))


def test_top_k_keeps_exactly_k_candidates() -> None:
    logits = [0.1 * i for i in range(20)]
    params = SamplingParameters(top_k=3, do_sample=True)
    assert kept(logits, params) == {17, 18, 19}
    drawn = {
        choose(torch.tensor([logits]), [SamplingParameters(top_k=3, do_sample=True, seed=seed)]).ids[0]
        for seed in range(300)
    }
    assert drawn == {17, 18, 19}


def test_top_k_one_is_greedy_without_nan() -> None:
    torch.manual_seed(2)
    logits = torch.randn(5, 40)
    params = [SamplingParameters(top_k=1, do_sample=True, seed=s) for s in range(5)]
    out = choose(logits, params, top_n=3)
    assert out.ids == logits.argmax(-1).tolist()
    assert out.logprobs == [0.0] * 5
    # Only one candidate is left, so only one top token is reported (no -inf entries).
    assert all(
        ids == [i] and values == [0.0] for i, (ids, values) in zip(out.ids, out.top_tokens, strict=True)
    )


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = [0.05, 0.5, 0.15, 0.3]
    logits = [math.log(p) for p in probs]
    assert kept(logits, SamplingParameters(top_p=0.4)) == {1}
    assert kept(logits, SamplingParameters(top_p=0.7)) == {1, 3}
    assert kept(logits, SamplingParameters(top_p=0.9)) == {1, 3, 2}
    assert kept(logits, SamplingParameters(top_p=0.99)) == {0, 1, 2, 3}
    # The kept tokens are renormalised.
    got = processed_logprobs(logits, SamplingParameters(top_p=0.7))
    assert math.exp(got[1]) == pytest.approx(0.5 / 0.8, abs=1e-6)


def reference_typical(logits: list[float], mass: float) -> set[int]:
    """Typical-p spelled out token by token."""
    logps = log_softmax(logits)
    entropy = -sum(math.exp(lp) * lp for lp in logps)
    by_distance = sorted(range(len(logits)), key=lambda i: abs(-logps[i] - entropy))
    chosen: set[int] = set()
    total = 0.0
    for i in by_distance:
        chosen.add(i)
        total += math.exp(logps[i])
        if total >= mass:
            break
    return chosen


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.8, 0.95])
def test_typical_p_matches_reference(mass: float) -> None:
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        logits = (torch.randn(12, generator=generator) * 2).tolist()
        assert kept(logits, SamplingParameters(typical_p=mass)) == reference_typical(logits, mass)


def test_neutral_rows_are_bit_for_bit_untouched_by_other_rows_warpers() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 25)
    params = [
        SamplingParameters(do_sample=True, seed=1),
        SamplingParameters(temperature=0.7, top_k=5, top_p=0.8, typical_p=0.9, seed=2),
    ]
    out = choose(logits, params, top_n=25)
    ids, values = out.top_tokens[0]
    assert torch.equal(torch.tensor(values), torch.log_softmax(logits[0], -1)[ids])
    assert len(out.top_tokens[1][0]) <= 5


def test_no_nan_with_all_equal_logits() -> None:
    logits = torch.zeros(4, 16)
    params = [
        SamplingParameters(do_sample=True, seed=1),
        SamplingParameters(top_k=1, seed=2),
        SamplingParameters(top_p=0.5, seed=3),
        SamplingParameters(typical_p=0.5, temperature=0.3, seed=4),
    ]
    out = choose(logits, params, top_n=16)
    assert all(math.isfinite(lp) for lp in out.logprobs)
    for ids, values in out.top_tokens:
        assert ids and all(math.isfinite(v) for v in values)


def run_sequence(seed: int, position: int, others: int, steps: int = 25) -> list[int]:
    """One sampled request's tokens over `steps` steps, batched at row `position` among others."""
    logits_per_step = torch.randn(steps, 64, generator=torch.Generator().manual_seed(99))
    target = RequestSampler(SamplingParameters(do_sample=True, top_k=20, temperature=0.9, seed=seed))
    companions = [RequestSampler(SamplingParameters(do_sample=True, seed=1000 + i)) for i in range(others)]
    tokens = []
    for step in range(steps):
        samplers = list(companions)
        samplers.insert(position, target)
        noise = torch.randn(len(samplers), 64)  # the other rows' logits differ from run to run
        noise[position] = logits_per_step[step]
        out = choose_tokens(noise, samplers, [[]] * len(samplers), [0] * len(samplers))
        tokens.append(out.ids[position])
    return tokens


def test_same_seed_same_tokens_whatever_the_batch() -> None:
    alone = run_sequence(seed=42, position=0, others=0)
    assert run_sequence(seed=42, position=3, others=5) == alone
    assert run_sequence(seed=42, position=1, others=2) == alone


def test_different_seeds_differ() -> None:
    assert run_sequence(seed=1, position=0, others=0) != run_sequence(seed=2, position=0, others=0)


def test_sampling_follows_the_distribution() -> None:
    # 4000 requests with different seeds in one batch: also exercises the batched draw.
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.log(probs).expand(4000, 4)
    params = [SamplingParameters(do_sample=True, seed=s) for s in range(4000)]
    out = choose(logits, params)
    counts = torch.bincount(torch.tensor(out.ids), minlength=4).double() / 4000
    assert counts[3] == 0
    assert counts[:3].tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.03)


def test_mixed_greedy_and_sampled_batch() -> None:
    torch.manual_seed(5)
    logits = torch.randn(6, 32)
    params = [SamplingParameters(do_sample=i % 2 == 1, top_k=4 if i % 2 else 0, seed=i) for i in range(6)]
    out = choose(logits, params, top_n=2)
    top4 = logits.topk(4, dim=-1).indices
    for row, token in enumerate(out.ids):
        if row % 2 == 0:
            assert token == int(logits[row].argmax())
        else:
            assert token in top4[row].tolist()


def test_top_n_tokens_sorted_and_consistent_with_logprobs() -> None:
    torch.manual_seed(6)
    logits = torch.randn(3, 40)
    out = choose(
        logits, [SamplingParameters(), SamplingParameters(do_sample=True, seed=3), SamplingParameters()],
        top_n=[5, 3, 0],
    )
    assert [len(ids) for ids, _ in out.top_tokens] == [5, 3, 0]
    for row, (ids, values) in enumerate(out.top_tokens):
        assert values == sorted(values, reverse=True)
        full = torch.log_softmax(logits[row], -1)
        assert values == pytest.approx(full[ids].tolist())
        assert ids == full.topk(len(ids)).indices.tolist()
        if ids and out.ids[row] == ids[0]:
            assert out.logprobs[row] == pytest.approx(values[0])
    assert out.top_tokens[0][0][0] == out.ids[0]


def test_half_precision_logits() -> None:
    logits = torch.tensor([[0.5, 3.0, 1.0]], dtype=torch.bfloat16)
    assert choose(logits, [SamplingParameters(top_k=2, seed=1)]).ids[0] in (1, 2)


def test_sampling_flag_follows_warpers() -> None:
    assert not SamplingParameters().sampling
    assert SamplingParameters(do_sample=True).sampling
    assert SamplingParameters(temperature=0.5).sampling
    assert SamplingParameters(top_k=5).sampling
    assert not SamplingParameters(repetition_penalty=1.2).sampling


def test_a_greedy_record_without_a_seed_gets_a_sampler() -> None:
    unseeded = RequestSampler(SamplingParameters(seed=None)).next_uniform()
    assert unseeded == RequestSampler(SamplingParameters(seed=0)).next_uniform()


def test_prompt_token_logprobs_score_each_next_token_unprocessed() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0], [9.0, 9.0, 9.0]])
    got = prompt_token_logprobs(logits, [2, 0])  # two targets: the third row scores nothing
    assert got == pytest.approx([log_softmax([1.0, 2.0, 3.0])[2], log_softmax([0.0, 0.0, 5.0])[0]])
    assert prompt_token_logprobs(logits, []) == []
