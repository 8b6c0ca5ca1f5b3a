"""N-gram speculation (prompt lookup): draft a request's next tokens from its own ids, verify them in one step.

A decoding request whose last few tokens appeared earlier in its prompt or output probably continues the
way they continued then (a rewrite copies its passage, code repeats its names). `NgramIndex` finds the
latest earlier occurrence of the last `n` ids (longest n first: 3, then 2, then 1) and proposes the ids
that followed it, up to `speculate` of them. The scheduler turns the request's step into a chunk of the
newest token plus its drafts, with logits at every row (shard/scheduler.py DraftChunk); the sampler keeps
the longest accepted prefix plus one token of the model's own (shard/sampling.py verify_drafts); the
postprocess advances the request by what was kept, so the keys/values written for rejected drafts lie
past its cached length and are overwritten by the next step (shard/postprocess.py).

Which requests draft (`Drafter.drafts`): decoding ones without a grammar (a grammar would have to
validate each draft; they decode one token a step as before), and never past max_new_tokens: a step
emits at most the drafts plus one, so drafts stop one short of the request's last token and the chunk's
keys/values stay inside the blocks reserved at admission. How many a request drafts follows its recent
acceptance rate and the step's batch size (a verify row costs real time on a CPU: see Drafter), and a
step's drafts in all are capped so that its rows stay within `max_step_rows` (the one-call decode
kernels' row limit on one CPU rank), so speculating never pushes a batch onto the slower many-row path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Longest and shortest n-gram matched against the request's earlier ids.
MAX_NGRAM = 3
MIN_NGRAM = 1
# Drafts after a match of one id only: a single id recurs far more often than what follows it does (on the
# grounded prompts with SmolLM2-135M: 3 drafts after a one-id match were kept far less often than after
# longer ones; capping them at 1 gave 2-3% more tokens per unit of step time in a replay of its outputs).
SINGLE_ID_DRAFTS = 1


class NgramIndex:
    """For n in [min_n, max_n]: each n-gram of a sequence -> the position just after its latest occurrence.

    Incremental: `propose` indexes the ids appended since its last call (a request's ids only grow), so a
    step costs O(new tokens), not O(sequence). The n-grams ending at the sequence's last id are indexed
    only once more ids follow: the current suffix must match an *earlier* occurrence."""

    def __init__(self, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM) -> None:
        self.max_n = max_n
        self.min_n = min_n
        self._after: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]
        self._indexed = 0  # n-grams ending at positions <= this are in the maps

    def _extend(self, ids: Sequence[int]) -> None:
        last = len(ids) - 1  # n-grams ending at `last` (exclusive end) and before
        for end in range(self._indexed + 1, last + 1):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._after[n][tuple(ids[end - n: end])] = end
        self._indexed = max(self._indexed, last)

    def propose(self, ids: Sequence[int], count: int) -> list[int]:
        """Up to `count` ids that followed the latest earlier occurrence of the longest matching suffix (up
        to SINGLE_ID_DRAFTS when only the last id matches)."""
        if count <= 0 or len(ids) < 2:
            return []
        self._extend(ids)
        length = len(ids)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            end = self._after[n].get(tuple(ids[length - n:]))
            if end is not None:
                return list(ids[end: end + (count if n > 1 else min(count, SINGLE_ID_DRAFTS))])
        return []


# A draft is worth its row while the chance it is kept (the request's acceptance rate to the power of
# its place among the drafts) is at least this many times the step's decoding requests. An extra row
# costs about a tenth of a one-row step here (SmolLM2-135M, bf16, 2 cores: 1-3 drafts at one stream cost
# 0-25% more), and adding it pays when its expected token adds more to the step's B tokens than its row
# adds to the step's time: p > B * row / step. The step's time grows with B, the cost of a row much less,
# so this errs on the safe side for larger batches: at 10 streams and more no draft qualifies (a
# rate above 1 would be needed) and the step is what it would be without speculation.
MIN_GAIN = 0.1
# The same share where the weights are quantized (--quantize): their row kernels are bound by arithmetic
# at one row (with VNNI each input row is its own integer products), so a row costs more. Steps of 1, 2,
# 3 and 4 rows took, in ms (bench.engine_step, SmolLM2-135M, 2026-12-07, two runs): int4 4.9-5.5, 6.2-7.1,
# 8.3-8.9, 8.8-9.4; bf16 8.9-10.6, 9.5-11.8, 10.6-13.8, 15.3-16.2. A row is ~25% of an int4 forward, and
# ~18% of what a client waits per step (forward plus ~2 ms for the trip through gRPC and the router).
MIN_GAIN_QUANTIZED = 0.2
# Each step's counts weigh this much less per step after it: a request's rate follows its recent text.
DECAY = 0.8
# Before a request has verified anything its rate is this prior (1 kept, 1 rejected: one half).
PRIOR_ACCEPTED, PRIOR_REJECTED = 1.0, 1.0


@dataclass
class SpeculationStats:
    """Draft tokens proposed and accepted, over one step or a lifetime."""

    drafted: int = 0
    accepted: int = 0

    def add(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class RequestDrafting:
    """One request's drafting state: its n-gram index and its recent acceptance.

    The rate is the chance that a draft is kept given the ones before it were: kept drafts over kept drafts
    plus rejections (a step ends at its first rejected draft, if any), each count decayed per step.
    """

    ngrams: NgramIndex = field(default_factory=NgramIndex)
    accepted: float = PRIOR_ACCEPTED
    rejected: float = PRIOR_REJECTED
    # While it drafts nothing: (position, id) of the draft it would have had, checked against the token
    # the step produced there, so that a request whose text starts repeating its input drafts again.
    shadow: tuple[int, int] | None = None

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def worth(self, most: int, min_gain: float = MIN_GAIN) -> int:
        """How many drafts (at most `most`) are each likelier to be kept than `min_gain`."""
        count, chance = 0, 1.0
        rate = self.rate
        while count < most:
            chance *= rate
            if chance < min_gain:
                break
            count += 1
        return count

    def record(self, drafted: int, accepted: int) -> None:
        self.accepted = self.accepted * DECAY + accepted
        self.rejected = self.rejected * DECAY + (1 if accepted < drafted else 0)


class Draftable(Protocol):
    """What the drafter reads of a request (shard/request_state.py RequestState), and its drafting state."""

    input_length: int
    max_new_tokens: int
    all_ids: list[int]
    cached_length: int
    matcher: Any
    finish_reason: Any
    drafting: RequestDrafting | None


@dataclass
class Drafter:
    """Drafts for the decoding requests of a step (`speculate` at most each; 0 turns speculation off).

    How many a request gets follows its recent acceptance rate (RequestDrafting.worth): text that repeats
    its input drafts up to `speculate` tokens a step, free text one or none, so that a step is not made
    longer by drafts that are almost never kept. When the step's rows are short, the drafts are dealt
    out one place at a time (every request's first draft, then every second one, ...): a first draft is
    the likeliest to be kept.

    Rows are short at `max_step_rows`, and at `exact_step_rows` for a step whose decoding rows are within
    it: the model's rounding may change with the number of rows in a step (the CPU kernels' does past 4),
    and greedy output must be the same with and without drafts, so a step stays on its side of that
    boundary. (At one stream on the CPU kernels that is 3 drafts at most.)
    """

    speculate: int
    max_step_rows: int = 32
    min_gain: float = MIN_GAIN
    # Rows up to which the model computes each row exactly as alone (the runner's exact_step_rows; 0:
    # none known): a step whose decoding rows are within stays within with its drafts.
    exact_step_rows: int = 0
    totals: SpeculationStats = field(default_factory=SpeculationStats)

    def drafts(self, requests: Sequence[Draftable], step_rows: int | None = None) -> list[list[int]]:
        """Per request (in order), its drafts: empty for requests that do not draft this step. `step_rows`:
        the step's rows without drafts (prompt chunks included); default: one per decoding request."""
        out: list[list[int]] = [[] for _ in requests]
        if self.speculate <= 0:
            return out
        decoding = [i for i, r in enumerate(requests) if r.cached_length >= r.input_length]
        rows = len(decoding) if step_rows is None else step_rows
        min_gain = self.min_gain * len(decoding)
        if min_gain >= 1.0 or rows >= self.max_step_rows:
            return out  # no draft can be worth a row (or find one): the step is as without speculation
        wanted: dict[int, int] = {}
        for i in decoding:
            request = requests[i]
            if request.matcher is not None or request.finish_reason is not None:
                continue
            # A step emits drafts + 1 tokens at most: the drafts end one short of max_new_tokens.
            room = request.max_new_tokens - (len(request.all_ids) - request.input_length) - 1
            if room <= 0:
                continue
            drafting = request.drafting
            if drafting is None:
                drafting = request.drafting = RequestDrafting()
            if drafting.shadow is not None:
                position, token = drafting.shadow
                drafting.shadow = None
                if position < len(request.all_ids):
                    drafting.record(1, int(request.all_ids[position] == token))
            count = drafting.worth(min(self.speculate, room), min_gain)
            if count > 0:
                wanted[i] = count
            else:
                guess = drafting.ngrams.propose(request.all_ids, 1)
                if guess:
                    drafting.shadow = (len(request.all_ids), guess[0])
        # The step has its rows anyway; drafts get the rows left under its limit.
        limit = self.max_step_rows
        if 0 < rows <= self.exact_step_rows:
            limit = min(limit, self.exact_step_rows)
        budget = limit - rows
        granted = dict.fromkeys(wanted, 0)
        place = 0
        while budget > 0 and any(count > place for count in wanted.values()):
            place += 1
            for i, count in wanted.items():
                if count >= place and budget > 0:
                    granted[i] += 1
                    budget -= 1
        for i, count in granted.items():
            if count:
                drafting = requests[i].drafting
                assert drafting is not None
                out[i] = drafting.ngrams.propose(requests[i].all_ids, count)
        return out

    def record(self, request: Draftable, drafted: int, accepted: int) -> None:
        """A request verified `drafted` drafts and kept `accepted` of them."""
        self.totals.add(drafted, accepted)
        if request.drafting is not None:
            request.drafting.record(drafted, accepted)
