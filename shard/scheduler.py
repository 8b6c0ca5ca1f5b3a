"""Which requests advance in a step, by how many tokens, and which rows of the step need logits.

Pure bookkeeping over lengths (no torch, no model): the engine hands it the requests of a step, the
runner feeds the plan to the model, the postprocess applies it to the requests. Nothing here changes a
request; a plan is worked out from the lengths the requests have before the step.

A step's rows are numbered in one order everywhere: one row per decoding request first (its newest
token), then the rows of each decoding request that drafts (its newest token and its drafts, see
shard/speculation.py), then every token of each prompt chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

# No chunk limit: a prefill that nobody waits for goes through in one piece.
UNLIMITED = 1 << 62


class Schedulable(Protocol):
    """What the scheduler reads of a request."""

    @property
    def input_length(self) -> int: ...
    @property
    def cached_length(self) -> int: ...
    @property
    def prefill_logprobs(self) -> bool: ...


R = TypeVar("R", bound=Schedulable)


@dataclass(frozen=True)
class PromptChunk(Generic[R]):
    """`length` prompt tokens of `request` from position `start` (its cached length), fed in this step."""

    request: R
    start: int
    length: int
    # The chunk's rows in the step's logits (not in the step's input rows): every token of the chunk for
    # a request that wants its prompt's logprobs, else only the last token of a prompt's final chunk.
    logits_start: int
    logits_count: int

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def completes_prompt(self) -> bool:
        """The chunk ends the prompt: its last row's logits choose the first generated token."""
        return self.end == self.request.input_length


@dataclass(frozen=True)
class DraftChunk(Generic[R]):
    """A decoding request's newest token and its `drafts`, fed at positions from `start` (its cached
    length), with logits at every row: row j scores the token after the newest and drafts[:j], so the
    step can keep the drafts the model agrees with, plus one token of its own (speculation)."""

    request: R
    start: int
    drafts: tuple[int, ...]
    logits_start: int  # its first row in the step's logits; it has `length` of them

    @property
    def length(self) -> int:
        return 1 + len(self.drafts)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class StepPlan(Generic[R]):
    decoding: list[R] = field(default_factory=list)  # one new token each
    chunks: list[PromptChunk[R]] = field(default_factory=list)
    # Input rows whose logits the model computes, in this order (the logits tensor's rows).
    logits_rows: list[int] = field(default_factory=list)
    # Decoding requests that verify drafts in this step (rows after the decoding ones, before the chunks).
    verifying: list[DraftChunk[R]] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return (len(self.decoding) + sum(v.length for v in self.verifying)
                + sum(chunk.length for chunk in self.chunks))

    @property
    def drafted(self) -> int:
        return sum(len(v.drafts) for v in self.verifying)

    @property
    def emitting(self) -> list[tuple[R, int]]:
        """(request, its row in the logits) for every request that gets a token in this step: the
        decoding ones, then those whose prompt this step completes."""
        out = [(request, row) for row, request in enumerate(self.decoding)]
        out += [(c.request, c.logits_start + c.logits_count - 1) for c in self.chunks if c.completes_prompt]
        return out

    def __bool__(self) -> bool:
        return bool(self.decoding or self.chunks or self.verifying)


class Scheduler:
    """Plans one step: every decoding request advances one token, prompts advance under a chunk budget.

    While other requests are waiting on this step (some decode in it, or cached batches of the router
    sit outside it), prompts are fed at most `prefill_chunk_tokens` tokens per step in all, so running
    streams keep getting tokens instead of stalling behind a whole long prefill. A prefill alone goes as
    fast as it can: in one piece. A runner that cannot continue a prompt from its cached part
    (`supports_chunking` False) always gets whole prompts.
    """

    def __init__(self, prefill_chunk_tokens: int, supports_chunking: bool) -> None:
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.supports_chunking = supports_chunking

    def chunk_budget(self, others_waiting: bool) -> int:
        return self.prefill_chunk_tokens if others_waiting and self.supports_chunking else UNLIMITED

    def schedule(self, requests: Sequence[R], others_waiting: bool = False,
                 drafts: Sequence[Sequence[int]] | None = None) -> StepPlan[R]:
        """The plan for one step of `requests` (in their order). `others_waiting`: requests outside this
        step wait for it to end. A prompt left out by the budget waits for a later step. `drafts`: per
        request, the tokens a decoding one verifies after its newest (shard/speculation.py); none if
        empty or not given."""
        decoding: list[R] = []
        drafting: list[tuple[R, tuple[int, ...]]] = []
        for i, r in enumerate(requests):
            if r.cached_length < r.input_length:
                continue
            if drafts is not None and drafts[i]:
                drafting.append((r, tuple(drafts[i])))
            else:
                decoding.append(r)
        budget = self.chunk_budget(others_waiting or bool(decoding) or bool(drafting))
        logits_rows = list(range(len(decoding)))
        row = len(decoding)
        verifying: list[DraftChunk[R]] = []
        for r, tokens in drafting:
            chunk = DraftChunk(r, r.cached_length, tokens, len(logits_rows))
            logits_rows.extend(range(row, row + chunk.length))
            verifying.append(chunk)
            row += chunk.length
        chunks: list[PromptChunk[R]] = []
        for r in requests:
            if r.cached_length >= r.input_length or budget <= 0:
                continue
            length = min(r.input_length - r.cached_length, budget)
            budget -= length
            completes = r.cached_length + length == r.input_length
            if r.prefill_logprobs:
                wanted = range(row, row + length)
            else:
                wanted = range(row + length - 1, row + length) if completes else range(0)
            chunks.append(PromptChunk(r, r.cached_length, length, len(logits_rows), len(wanted)))
            logits_rows.extend(wanted)
            row += length
        return StepPlan(decoding, chunks, logits_rows, verifying)
