"""The postprocess on its own: a planned step's effect on its requests, with chosen tokens given by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from shard.detokenize import special_token_ids
from shard.postprocess import Postprocessor
from shard.request_state import RequestState
from shard.sampling import ChosenTokens
from shard.scheduler import Scheduler
from shard.stopping import FinishReason
from shard.types import Request
from tests.model_factory import build_tokenizer

EOS = 2  # <|im_end|>


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out: Path = tmp_path_factory.mktemp("postprocess-tokenizer")
    build_tokenizer(out)
    return Tokenizer.from_file(str(out / "tokenizer.json"))


def admit(tokenizer: Tokenizer, rid: int, prompt: str, **fields) -> RequestState:
    return RequestState.admit(Request(id=rid, input_ids=tokenizer.encode(prompt).ids, **fields), tokenizer,
                              frozenset({EOS}), special_token_ids(tokenizer))


def chosen(ids: list[int]) -> ChosenTokens:
    return ChosenTokens(ids=ids, logprobs=[-0.5] * len(ids), top_tokens=[([], []) for _ in ids])


def test_a_step_moves_cached_lengths_appends_tokens_and_reports_them(tokenizer: Tokenizer) -> None:
    running = admit(tokenizer, 1, "Hello", max_new_tokens=5)
    running.cached_length = running.input_length
    running.all_ids.append(tokenizer.encode(" the").ids[0])  # the token the prefill chose, not cached yet
    long = admit(tokenizer, 2, "The quick brown fox jumps over the lazy dog " * 3, max_new_tokens=5)
    plan = Scheduler(8, supports_chunking=True).schedule([running, long])
    assert [c.length for c in plan.chunks] == [8]
    word = tokenizer.encode(" cat").ids[0]
    generations = Postprocessor(tokenizer, special_token_ids(tokenizer)).apply(plan, [[]], chosen([word]))
    assert running.cached_length == running.input_length + 1 and running.all_ids[-1] == word
    assert long.cached_length == 8 and len(long.all_ids) == long.input_length  # no token yet
    assert [g.request_id for g in generations] == [1]
    assert generations[0].tokens.ids == [word] and generations[0].tokens.logprobs == [-0.5]
    assert generations[0].generated_text is None and running.finish_reason is None


def test_eos_and_length_finish_with_the_whole_text(tokenizer: Tokenizer) -> None:
    eos = admit(tokenizer, 1, "Hi", max_new_tokens=5)
    short = admit(tokenizer, 2, "Hi", max_new_tokens=1)
    plan = Scheduler(64, supports_chunking=True).schedule([eos, short])
    word = tokenizer.encode("hello").ids[0]
    generations = Postprocessor(tokenizer, special_token_ids(tokenizer)).apply(plan, [[], []], chosen([EOS, word]))
    assert (eos.finish_reason, short.finish_reason) == (FinishReason.EOS_TOKEN, FinishReason.LENGTH)
    done = {g.request_id: g.generated_text for g in generations}
    assert done[1] is not None and done[1].text == "" and done[1].generated_tokens == 1
    assert generations[0].tokens.texts == ["<|im_end|>"] and generations[0].tokens.is_special == [True]
    assert done[2] is not None and done[2].text == tokenizer.decode([word]) and done[2].seed is None


def test_prompt_logprobs_gather_over_chunks_into_the_prefill_tokens(tokenizer: Tokenizer) -> None:
    request = admit(tokenizer, 1, "The quick brown fox jumps", prefill_logprobs=True, max_new_tokens=3)
    n = request.input_length
    scheduler, post = Scheduler(3, supports_chunking=True), Postprocessor(tokenizer, special_token_ids(tokenizer))
    generations = []
    while not generations:
        plan = scheduler.schedule([request], others_waiting=True)
        chunk = plan.chunks[0]
        # one logprob per prompt token after the first: the chunk's rows score the next prompt tokens
        values = [-float(p + 1) for p in range(chunk.start, min(chunk.end, n - 1))]
        generations = post.apply(plan, [values], chosen([7]) if chunk.completes_prompt else None)
    prefill = generations[0].prefill_tokens
    assert prefill is not None and prefill.ids == request.all_ids[:n]
    assert math.isnan(prefill.logprobs[0]) and prefill.logprobs[1:] == [-float(p) for p in range(1, n)]
    assert prefill.texts == [tokenizer.decode([i]) for i in request.all_ids[:n]]
    assert request.cached_length == n and request.all_ids[n:] == [7]


class Registry:
    """A stand-in prefix cache: records what the postprocess hands it."""

    block_size = 4

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[bytes]]] = []

    def register_blocks(self, blocks: Sequence[int], keys: Sequence[bytes], first: int) -> None:
        self.calls.append((first, list(keys[first:])))


def test_only_blocks_full_of_computed_tokens_are_keyed_and_cached(tokenizer: Tokenizer) -> None:
    from shard.block_manager import chain_hashes

    registry = Registry()
    post = Postprocessor(tokenizer, special_token_ids(tokenizer), registry)
    long = admit(tokenizer, 2, "The quick brown fox jumps over the lazy dog " * 3, max_new_tokens=5)
    long.block_table = list(range(100, 120))
    scheduler = Scheduler(6, supports_chunking=True)
    post.apply(scheduler.schedule([long], others_waiting=True), [[]], None)  # 6 tokens: block 0 only
    post.apply(scheduler.schedule([long], others_waiting=True), [[]], None)  # 12 tokens: blocks 1 and 2
    keys = chain_hashes(None, long.all_ids[:12], 4)
    assert registry.calls == [(0, keys[:1]), (1, keys[1:3])]
    assert long.block_hashes == keys
    scheduler.prefill_chunk_tokens = 2
    post.apply(scheduler.schedule([long], others_waiting=True), [[]], None)  # 14 tokens: block 3 still partial
    assert len(registry.calls) == 2 and long.block_hashes == keys
