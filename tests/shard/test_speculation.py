"""N-gram speculation without the server: drafting, planning, verifying, and the engine's output with
`speculate` equal to its output without (greedy), on a tiny random Llama."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from common.sampling import SamplingParameters
from shard.block_manager import chain_hashes
from shard.cli import build_engine
from shard.distributed import Distributed
from shard.engine import Engine
from shard.sampling import RequestSampler, verify_drafts
from shard.scheduler import DraftChunk, PromptChunk, Scheduler
from shard.speculation import Drafter, NgramIndex, RequestDrafting
from shard.stopping import FinishReason
from shard.types import GeneratedText, Request
from tests.model_factory import build_llama

# ---- drafting ---------------------------------------------------------------------------------------


def test_the_longest_suffix_match_proposes_what_followed_its_latest_occurrence() -> None:
    index = NgramIndex()
    ids = [1, 2, 3, 4, 5, 9, 3, 4, 7, 8, 2, 3, 4]
    # "2 3 4" occurred once before, followed by 5 9 3
    assert index.propose(ids, 3) == [5, 9, 3]
    # one id later the suffix "3 4 6" is new, as is "4 6"; "6" too: nothing to propose
    assert index.propose(ids + [6], 3) == []
    # "4 7" occurred once: followed by 8 2 3 (cut to the count)
    assert index.propose([*ids, 6, 4, 7], 2) == [8, 2]
    # a single id matches its latest earlier occurrence: the "3" at 3 (not the one at 0), followed by 4 (one
    # draft only after a one-id match)
    assert NgramIndex().propose([3, 4, 7, 3, 4, 1, 3], 2) == [4]


def test_the_index_grows_with_the_ids_and_never_matches_the_suffix_itself() -> None:
    index = NgramIndex()
    assert index.propose([5], 4) == []
    assert index.propose([5, 5], 4) == [5]  # "5" occurred at 0, followed by 5
    ids = [5, 5]
    for token in (6, 5, 5):
        ids.append(token)
        index.propose(ids, 4)
    assert index.propose(ids, 4) == [6, 5, 5]  # "5 5" last occurred at 0-1, followed by 6 5 5
    assert index.propose(ids, 0) == []


@dataclass
class FakeState:
    input_length: int
    all_ids: list[int]
    max_new_tokens: int
    cached_length: int = 0
    matcher: object | None = None
    finish_reason: object | None = None
    drafting: RequestDrafting | None = None
    prefill_logprobs: bool = False


def decoding(prompt: list[int], generated: list[int], max_new: int, **kwargs) -> FakeState:
    ids = prompt + generated
    return FakeState(len(prompt), ids, max_new, cached_length=len(ids) - 1, **kwargs)


PATTERN = [10, 11, 12, 13, 14, 15]


def test_drafts_stop_one_short_of_max_new_tokens_and_skip_grammars_and_prompts() -> None:
    drafter = Drafter(speculate=4, min_gain=0.0)
    free = decoding(PATTERN * 2, [10], max_new=50)
    near_end = decoding(PATTERN * 2, [10, 11], max_new=4)  # 2 generated, 2 to go: one draft at most
    last = decoding(PATTERN * 2, [10, 11, 12], max_new=4)  # its next token is its last: no draft
    grammar = decoding(PATTERN * 2, [10], max_new=50, matcher=object())
    prompt = FakeState(12, PATTERN * 2, 50)  # still prefilling
    drafts = drafter.drafts([free, near_end, last, grammar, prompt])
    assert drafts == [[11, 12, 13, 14], [12], [], [], []]


def test_a_steps_drafts_stay_under_its_row_limit_first_drafts_first() -> None:
    requests = [decoding(PATTERN * 2, [10], max_new=50) for _ in range(3)]
    # 3 rows for the newest tokens, 4 left for drafts: everyone's first, then the first one's second
    assert Drafter(speculate=4, max_step_rows=7, min_gain=0.0).drafts(requests) == [[11, 12], [11], [11]]
    assert Drafter(speculate=1, max_step_rows=7, min_gain=0.0).drafts(requests) == [[11], [11], [11]]
    assert Drafter(speculate=0).drafts(requests) == [[], [], []]


def test_a_step_within_the_exact_rows_stays_within_them() -> None:
    def lengths(batch: int, exact: int) -> list[int]:
        requests = [decoding(PATTERN * 2, [10], max_new=50) for _ in range(batch)]
        return [len(d) for d in Drafter(speculate=5, min_gain=0.0, exact_step_rows=exact).drafts(requests)]

    assert lengths(1, 4) == [3]  # 4 rows: the per-row kernel's limit
    assert lengths(2, 4) == [1, 1]
    assert lengths(4, 4) == [0, 0, 0, 0]
    assert lengths(5, 4) == [5] * 5  # past the limit already: drafts do not cross it
    assert lengths(1, 0) == [5]


def test_more_decoding_requests_ask_more_of_a_draft() -> None:
    # the prior rate, 0.5, is worth a row at one stream (threshold 0.1) and at four (0.4), not at six (0.6)
    one = [decoding(PATTERN * 2, [10], max_new=50)]
    assert len(Drafter(speculate=4).drafts(one)[0]) == 3
    four = [decoding(PATTERN * 2, [10], max_new=50) for _ in range(4)]
    assert [len(d) for d in Drafter(speculate=4).drafts(four)] == [1, 1, 1, 1]
    six = [decoding(PATTERN * 2, [10], max_new=50) for _ in range(6)]
    assert Drafter(speculate=4).drafts(six) == [[]] * 6


def test_a_requests_drafts_follow_its_acceptance_and_come_back_when_its_guesses_would_hit() -> None:
    drafter = Drafter(speculate=5)  # min_gain 0.1
    request = decoding(PATTERN * 3, [10], max_new=200)
    assert len(drafter.drafts([request])[0]) == 3  # the prior rate, one half: 0.5, 0.25, 0.125 >= 0.1
    for _ in range(8):  # every draft rejected: the rate falls until not even one draft is worth a row
        drafter.record(request, 3, 0)
    assert drafter.drafts([request])[0] == []
    assert request.drafting.shadow == (len(request.all_ids), 11)
    for token in [11, 12, 13, 14, 15, 10, 11, 12]:  # the text follows the guesses again
        request.all_ids.append(token)
        request.cached_length += 1
        if drafter.drafts([request])[0]:
            break
    assert request.drafting.rate > 0.2 and drafter.drafts([request])[0]
    for _ in range(10):  # everything kept: as many as allowed
        drafter.record(request, 5, 5)
    assert len(drafter.drafts([request])[0]) == 5


# ---- planning ---------------------------------------------------------------------------------------


def test_a_drafting_request_is_a_chunk_of_its_newest_token_and_drafts_with_logits_at_every_row() -> None:
    plain = decoding([1, 2, 3], [4], 10)
    drafting = decoding([1, 2, 3], [4, 5], 10)
    prompt = FakeState(5, [7, 7, 7, 7, 7], 10)
    plan = Scheduler(64, supports_chunking=True).schedule([drafting, plain, prompt], drafts=[[6, 7], [], []])
    assert plan.decoding == [plain]
    assert plan.verifying == [DraftChunk(drafting, 4, (6, 7), 1)]
    assert plan.chunks == [PromptChunk(prompt, 0, 5, 4, 1)]
    # rows: plain's newest (0), drafting's newest + 2 drafts (1-3), the prompt (4-8): its last gives a token
    assert plan.logits_rows == [0, 1, 2, 3, 8]
    assert plan.num_rows == 9 and plan.drafted == 2
    assert plan.emitting == [(plain, 0), (prompt, 4)]


# ---- verifying --------------------------------------------------------------------------------------


def rows(*best: int, vocab: int = 8) -> torch.Tensor:
    """One logits row per id, that id clearly best."""
    logits = torch.zeros(len(best), vocab)
    for i, token in enumerate(best):
        logits[i, token] = 5.0
    return logits


GREEDY = SamplingParameters()


def test_greedy_keeps_the_drafts_the_argmax_agrees_with_then_the_argmax() -> None:
    samplers = [RequestSampler(GREEDY) for _ in range(3)]
    logits = torch.cat([rows(3, 4, 6), rows(1, 2), rows(5, 5, 5, 0)])
    out = verify_drafts(logits, samplers, [[9], [9], [9]], [0, 2, 0], [[3, 5], [1], [5, 5, 5]])
    assert [v.ids for v in out] == [[3, 4], [1, 2], [5, 5, 5, 0]]
    assert [v.accepted for v in out] == [1, 1, 3]
    expected = float(torch.log_softmax(rows(3)[0], dim=-1)[3])
    assert out[0].logprobs == pytest.approx([expected, expected])
    assert out[0].top_tokens == [([], []), ([], [])]
    assert [ids[0] for ids, _ in out[1].top_tokens] == [1, 2] and all(len(ids) == 2 for ids, _ in out[1].top_tokens)


def test_penalties_see_the_drafts_before_each_row() -> None:
    # Row 1 prefers 2 over 3; with 2 in its history (the draft before it), the repetition penalty halves
    # it and 3 wins: the same choice one-at-a-time decoding makes after emitting 2.
    params = SamplingParameters(repetition_penalty=2.0)
    logits = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.5, 0.0]])
    out = verify_drafts(logits, [RequestSampler(params)], [[0]], [0], [[2]])
    assert out[0].ids == [2, 3]


def sampled(seed: int, temperature: float = 1.0) -> RequestSampler:
    return RequestSampler(SamplingParameters(do_sample=True, seed=seed, temperature=temperature))


def test_sampled_acceptance_keeps_each_tokens_distribution() -> None:
    """Speculative sampling with a fixed draft: the first token is distributed as p, the second as p'."""
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.1, 0.1, 0.1, 0.7])
    logits = torch.stack([p.log(), q.log()])
    trials = 2500
    firsts, seconds = torch.zeros(4), torch.zeros(4)
    sampler = sampled(1)  # one stream of uniforms for every trial
    for _ in range(trials):
        out = verify_drafts(logits, [sampler], [[0]], [0], [[1]])[0]
        firsts[out.ids[0]] += 1
        if len(out.ids) == 2:
            assert out.ids[0] == 1 and out.accepted == 1
            seconds[out.ids[1]] += 1
    assert torch.allclose(firsts / trials, p, atol=0.03), firsts / trials
    # the draft was kept about p(1) of the time, and the token after it follows the second row
    assert abs(seconds.sum() / trials - 0.3) < 0.03
    assert torch.allclose(seconds / seconds.sum(), q, atol=0.05), seconds / seconds.sum()


def test_sampled_verification_depends_on_the_seed_only() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    first = [verify_drafts(logits, [sampled(seed, 0.7)], [[1, 2]], [0], [[3, 4, 5]])[0].ids for seed in range(20)]
    again = [verify_drafts(logits, [sampled(seed, 0.7)], [[1, 2]], [0], [[3, 4, 5]])[0].ids for seed in range(20)]
    assert first == again
    assert len({tuple(ids) for ids in first}) > 1


# ---- the engine -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("speculation-llama"), num_attention_heads=6, num_key_value_heads=2,
                       suppress_eos=True)


def new_engine(model_dir: Path, speculate: int) -> Engine:
    args = argparse.Namespace(model_dir=model_dir, dtype="float32", kv_cache_bytes=8 << 20, block_size=16,
                              speculate=speculate)
    engine = build_engine(args, Distributed(0, 1, torch.device("cpu")))
    engine.warmup(max_input_tokens=128, max_prefill_tokens=256)
    return engine


@dataclass
class Output:
    ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[int]] = field(default_factory=list)
    done: GeneratedText | None = None


def check_cache_invariants(engine: Engine) -> None:
    """Every running request: its ids one past its cached length, and the blocks it keyed (the prefix
    cache's) keyed by its accepted ids only."""
    size = engine.runner.block_size
    for states in engine.batches.values():
        for s in states:
            assert len(s.all_ids) == s.cached_length + 1
            if engine.runner.prefix_caching:
                assert s.block_hashes == chain_hashes(None, s.all_ids[: s.cached_length], size)


def generate(engine: Engine, requests: list[Request]) -> dict[int, Output]:
    out = {r.id: Output() for r in requests}

    def take(result) -> int | None:
        for g in result.generations:
            o = out[g.request_id]
            o.ids += g.tokens.ids
            o.texts += g.tokens.texts
            o.logprobs += g.tokens.logprobs
            o.top += [t.ids for t in g.top_tokens]
            assert len(g.tokens.ids) == len(g.tokens.texts) == len(g.tokens.logprobs) == len(g.tokens.is_special)
            if g.generated_text is not None:
                o.done = g.generated_text
        check_cache_invariants(engine)
        return result.batch.id if result.batch is not None else None

    batch = take(engine.prefill(1, requests, None))
    while batch is not None:
        batch = take(engine.decode([batch]))
    return out


REPEATING = [40, 41, 42, 43, 44, 45, 46, 47] * 4
PROMPTS = [REPEATING, [5, 6, 7, 8, 9], [100, 3, 100, 3, 100, 3], list(range(60, 90))]


@pytest.fixture(scope="module")
def engines(model_dir: Path) -> tuple[Engine, Engine]:
    speculating = new_engine(model_dir, 4)
    # Every match drafts all it can, whatever the acceptance so far and however many rows the step has:
    # the most drafts landing mid-step (this float32 model's logits are far from ties, so rows computed in
    # the CPU kernels' blocks instead of one by one still choose the same tokens).
    speculating.drafter.min_gain = 0.0
    speculating.drafter.exact_step_rows = 0
    return new_engine(model_dir, 0), speculating


def test_greedy_batched_output_with_speculation_is_the_output_without(engines: tuple[Engine, Engine]) -> None:
    plain, speculating = engines
    requests = [Request(id=i, input_ids=p, max_new_tokens=40 + 3 * i, top_n_tokens=2 if i == 1 else 0)
                for i, p in enumerate(PROMPTS)]
    free_before = speculating.free_blocks
    expected = generate(plain, requests)
    before = (speculating.drafter.totals.drafted, speculating.drafter.totals.accepted)
    got = generate(speculating, requests)
    for i in expected:
        assert got[i].ids == expected[i].ids, i
        assert got[i].texts == expected[i].texts, i
        assert got[i].logprobs == pytest.approx(expected[i].logprobs, abs=1e-4), i
        assert got[i].top == expected[i].top, i
        assert got[i].done == expected[i].done, i
    drafted = speculating.drafter.totals.drafted - before[0]
    accepted = speculating.drafter.totals.accepted - before[1]
    assert drafted > 0 and accepted > 0, (drafted, accepted)
    assert speculating.free_blocks == free_before


def test_max_new_tokens_and_stop_sequences_landing_mid_draft(engines: tuple[Engine, Engine]) -> None:
    plain, speculating = engines
    base = generate(plain, [Request(id=1, input_ids=REPEATING, max_new_tokens=48)])[1]
    text = base.done.text
    # stop sequences taken from the middle of the text: every one ends the request where it would
    # without speculation, wherever it falls in a step's drafts
    stops = [text[len(text) // 3: len(text) // 3 + 3], text[len(text) // 2: len(text) // 2 + 2]]
    requests = [Request(id=10 + n, input_ids=REPEATING, max_new_tokens=n) for n in (1, 2, 3, 5, 7, 11, 13)]
    requests += [Request(id=30 + i, input_ids=REPEATING, max_new_tokens=48, stop_sequences=(stop,))
                 for i, stop in enumerate(stops)]
    expected = generate(plain, requests)
    got = generate(speculating, requests)
    for r in requests:
        assert got[r.id].ids == expected[r.id].ids, r
        assert got[r.id].texts == expected[r.id].texts, r
        assert got[r.id].done == expected[r.id].done, r
    assert expected[30].done.finish_reason == FinishReason.STOP_SEQUENCE
    assert expected[11].done.finish_reason == FinishReason.LENGTH


def test_sampled_requests_are_reproducible_per_seed(engines: tuple[Engine, Engine]) -> None:
    _, speculating = engines
    params = SamplingParameters(do_sample=True, seed=7, temperature=0.8, top_k=20)
    alone = generate(speculating, [Request(id=1, input_ids=REPEATING, max_new_tokens=32, parameters=params)])[1]
    batched = generate(speculating, [Request(id=2, input_ids=PROMPTS[1], max_new_tokens=20),
                                     Request(id=1, input_ids=REPEATING, max_new_tokens=32, parameters=params)])[1]
    assert batched.ids == alone.ids and batched.done == alone.done
    other = SamplingParameters(do_sample=True, seed=8, temperature=0.8, top_k=20)
    assert generate(speculating, [Request(id=1, input_ids=REPEATING, max_new_tokens=32,
                                          parameters=other)])[1].ids != alone.ids


def test_a_prompt_that_repeats_an_earlier_output_reuses_only_accepted_blocks(engines: tuple[Engine, Engine]) -> None:
    """What the prefix cache keyed while speculating is what the model computed: a later prompt made of an
    earlier request's prompt and output reuses those blocks and still generates as without speculation."""
    plain, speculating = engines
    first = generate(speculating, [Request(id=1, input_ids=PROMPTS[2], max_new_tokens=60)])[1]
    follow_up = PROMPTS[2] + first.ids + [7, 8]
    result = speculating.prefill(5, [Request(id=2, input_ids=follow_up, max_new_tokens=1)], None)
    assert result.generations[0].cached_prompt_tokens >= 48
    expected = generate(plain, [Request(id=3, input_ids=follow_up, max_new_tokens=1)])[3]
    assert result.generations[0].tokens.ids == expected.ids


def test_requests_with_a_grammar_never_draft_and_keep_their_output(engines: tuple[Engine, Engine]) -> None:
    """A grammar's matcher would have to validate every draft: constrained requests decode one token a
    step next to drafting ones, with the output they have without speculation."""
    import json

    from shard.grammar import llguidance_grammar

    plain, speculating = engines
    grammar = llguidance_grammar("json", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}},
                                                     "required": ["a"], "additionalProperties": False}))
    requests = [Request(id=1, input_ids=REPEATING, max_new_tokens=24,
                        parameters=SamplingParameters(grammar=grammar)),
                Request(id=2, input_ids=PROMPTS[2], max_new_tokens=24)]
    drafted: list[int] = []
    original = speculating.drafter.drafts

    def spy(states, *args):
        out = original(states, *args)
        drafted.extend(len(d) for s, d in zip(states, out, strict=True) if s.id == 1)
        return out

    speculating.drafter.drafts = spy  # type: ignore[method-assign]
    try:
        got = generate(speculating, requests)
    finally:
        del speculating.drafter.drafts
    expected = generate(plain, requests)
    assert got[1].ids == expected[1].ids and got[1].done == expected[1].done
    assert got[2].ids == expected[2].ids
    assert drafted and not any(drafted)
    assert got[1].done.text.startswith('{"a"')


def test_bf16_greedy_at_one_stream_is_the_same_bits_with_speculation(model_dir: Path) -> None:
    """In bf16 a near tie can turn on rounding: with the CPU kernels a one-stream step keeps its drafts
    within the rows they compute one by one (exact_step_rows), so any N gives the tokens of N = 0."""
    def engine(speculate: int) -> Engine:
        args = argparse.Namespace(model_dir=model_dir, dtype="bfloat16", kv_cache_bytes=8 << 20, block_size=16,
                                  speculate=speculate, prefix_caching=False)
        built = build_engine(args, Distributed(0, 1, torch.device("cpu")))
        built.warmup(max_input_tokens=128, max_prefill_tokens=256)
        return built

    speculating = engine(5)
    # the CPU kernels are built here (tests/shard/test_cpu_kernels.py needs them too)
    assert speculating.runner.exact_step_rows > 0, "no CPU kernels: rows computed by torch may round by count"
    speculating.drafter.min_gain = 0.0
    plain = engine(0)
    for i, prompt in enumerate(PROMPTS):
        request = [Request(id=i, input_ids=prompt, max_new_tokens=48)]
        assert generate(speculating, request)[i].ids == generate(plain, request)[i].ids, i
    assert speculating.drafter.totals.accepted > 0
