"""Token choice for a batch: penalties and warpers on the logits, then greedy or seeded sampling.

`choose_tokens` runs once per engine step for the whole batch. Each processor works on the [B, V]
tensor at once with a per-row parameter column, and a row whose parameter is neutral comes out
bit-for-bit unchanged. Order (CONTRACT section 9): repetition, frequency and presence penalties, then
temperature, top-k, top-p, typical-p; then argmax or a draw from the request's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from common.sampling import SamplingParameters

NEG_INF = float("-inf")


class RequestSampler:
    """One request's sampling state: its parameters and its own seeded random stream.

    The generator lives on the CPU and gives one uniform number per sampled step, so a request's
    draws depend only on its seed and its own logits, never on the batch it shares or its row there.
    """

    def __init__(self, params: SamplingParameters) -> None:
        self.params = params
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(params.seed or 0)  # None: a greedy request that draws nothing

    def next_uniform(self) -> float:
        """A number in [0, 1) from this request's stream."""
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))


@dataclass
class ChosenTokens:
    ids: list[int]
    logprobs: list[float]
    # Per row (ids, logprobs), best first; empty lists when that row asked for no top tokens.
    top_tokens: list[tuple[list[int], list[float]]]


def choose_tokens(
    logits: torch.Tensor,
    samplers: Sequence[RequestSampler],
    histories: Sequence[Sequence[int]],
    top_n_tokens: Sequence[int],
    refused: tuple[list[int], torch.Tensor] | None = None,
) -> ChosenTokens:
    """Choose the next token of every request from its last-position logits [B, V].

    histories: prompt + generated ids per request, read only for rows with a penalty.
    refused: (rows, [len(rows), V] booleans, True for a token the row's grammar refuses) for rows under a
    grammar (shard/grammar.py); the others are free. The mask comes after the penalties and before the
    warpers, so that top-k and top-p choose among valid tokens only.
    logprobs are log_softmax of the processed logits, i.e. of the distribution actually used.
    """
    params = [s.params for s in samplers]
    scores = _processed_scores(logits, params, histories, refused)
    logprobs = torch.log_softmax(scores, dim=-1)
    ids = scores.argmax(dim=-1)
    sampled_rows = [i for i, p in enumerate(params) if p.sampling]
    if sampled_rows:
        ids = _sample_rows(ids, logprobs, samplers, sampled_rows)
    chosen_logprobs = logprobs.gather(1, ids.unsqueeze(1)).squeeze(1)
    return ChosenTokens(
        ids=ids.tolist(),
        logprobs=chosen_logprobs.tolist(),
        top_tokens=_top_tokens(logprobs, top_n_tokens),
    )


def _processed_scores(logits: torch.Tensor, params: Sequence[SamplingParameters], histories: Sequence[Sequence[int]],
                      refused: tuple[list[int], torch.Tensor] | None) -> torch.Tensor:
    """The logits after penalties, grammar masks and warpers, as float32 (the distribution a row samples)."""
    # float() returns the tensor itself when it is already float32: every step below is out-of-place
    # so the caller's logits are never modified.
    scores = logits.float()
    if any(p.has_penalties for p in params):
        scores = _apply_penalties(scores, params, histories)
    if refused is not None:
        scores = _apply_grammar_masks(scores, *refused)
    if any(p.has_warpers for p in params):
        scores = _apply_warpers(scores, params)
    return scores


@dataclass
class VerifiedTokens:
    """One request's tokens from a step that verified its drafts: the accepted drafts, then the model's own."""

    ids: list[int]
    logprobs: list[float]
    # Per id (ids, logprobs), best first; empty lists when the request asked for no top tokens.
    top_tokens: list[tuple[list[int], list[float]]]
    accepted: int  # how many of the drafts were kept (len(ids) - 1)


def verify_drafts(
    logits: torch.Tensor,
    samplers: Sequence[RequestSampler],
    histories: Sequence[Sequence[int]],
    top_n_tokens: Sequence[int],
    drafts: Sequence[Sequence[int]],
) -> list[VerifiedTokens]:
    """Keep each request's longest run of drafts the model accepts, plus one token of the model's own.

    logits: every request's rows in turn, len(drafts[i]) + 1 of them: row j gives the next token after the
    request's history and drafts[i][:j]. Each row is processed as choose_tokens would process it at that
    point (penalties see the drafts before it), so:
    - a greedy request keeps draft j while it is row j's argmax, then takes the argmax of the first row
      whose draft differs (or of the last row): exactly the tokens of one-at-a-time greedy decoding;
    - a sampled request uses the acceptance rule of speculative sampling for a deterministic draft: draft
      d is kept with probability p(d) under the row's processed distribution p; on a rejection the token
      is drawn from p without d, renormalised; when every draft is kept, the last row gives one more
      draw. Each token so produced has distribution p exactly, and every uniform comes from the request's
      own generator, so a seed gives the same output whatever it is batched with.
    """
    row_params: list[SamplingParameters] = []
    row_histories: list[Sequence[int]] = []
    for sampler, history, tokens in zip(samplers, histories, drafts, strict=True):
        for j in range(len(tokens) + 1):
            row_params.append(sampler.params)
            row_histories.append(list(history) + list(tokens[:j]) if sampler.params.has_penalties and j else history)
    scores = _processed_scores(logits, row_params, row_histories, None)
    best = scores.argmax(dim=-1).tolist()
    chosen: list[list[int]] = []
    emitted_rows: list[int] = []
    row = 0
    for sampler, tokens in zip(samplers, drafts, strict=True):
        if sampler.params.sampling:
            ids = _speculative_sample(scores[row: row + len(tokens) + 1], tokens, sampler)
        else:
            kept = 0
            while kept < len(tokens) and best[row + kept] == tokens[kept]:
                kept += 1
            ids = list(tokens[:kept]) + [best[row + kept]]
        chosen.append(ids)
        emitted_rows.extend(range(row, row + len(ids)))
        row += len(tokens) + 1
    # Logprobs (and top tokens) of the emitted rows only: the rows after a rejection are never read.
    flat_ids = [token for ids in chosen for token in ids]
    index = torch.tensor(emitted_rows, dtype=torch.long, device=scores.device)
    emitted = torch.log_softmax(scores.index_select(0, index), dim=-1)
    flat_logprobs = emitted.gather(1, torch.tensor(flat_ids, device=scores.device)[:, None]).squeeze(1).tolist()
    row_top_n = [n for ids, n in zip(chosen, top_n_tokens, strict=True) for _ in ids]
    flat_top = _top_tokens(emitted, row_top_n)
    out: list[VerifiedTokens] = []
    at = 0
    for ids in chosen:
        out.append(VerifiedTokens(ids, flat_logprobs[at: at + len(ids)], flat_top[at: at + len(ids)], len(ids) - 1))
        at += len(ids)
    return out


def _speculative_sample(scores: torch.Tensor, drafts: Sequence[int], sampler: RequestSampler) -> list[int]:
    """The sampled tokens of one request's verify rows (processed scores [len(drafts) + 1, V]; see
    verify_drafts). A kept draft costs one probability; only the row that draws reads its whole
    distribution."""
    log_totals = torch.logsumexp(scores, dim=-1).tolist()
    drafted = torch.tensor(list(drafts), dtype=torch.long, device=scores.device)
    draft_scores = scores[: len(drafts)].gather(1, drafted[:, None]).squeeze(1).tolist() if drafts else []
    kept: list[int] = []
    for j, draft in enumerate(drafts):
        p_draft = math.exp(draft_scores[j] - log_totals[j])
        if sampler.next_uniform() < p_draft:
            kept.append(draft)
            continue
        residual = (scores[j].double() - log_totals[j]).exp()
        residual[draft] = 0.0
        if float(residual.sum()) <= 0.0:  # p(draft) is 1 up to rounding: nothing else can be drawn
            kept.append(draft)
            continue
        return kept + [_draw(residual, sampler.next_uniform())]
    last = len(drafts)
    return kept + [_draw((scores[last].double() - log_totals[last]).exp(), sampler.next_uniform())]


def _draw(probs: torch.Tensor, uniform: float) -> int:
    """Inverse CDF over unnormalised probabilities [V] (float64): a token with non-zero probability."""
    cdf = probs.cumsum(dim=-1)
    index = int(torch.searchsorted(cdf, cdf[-1:] * uniform, right=True).clamp(max=cdf.shape[-1] - 1))
    while index > 0 and probs[index] <= 0.0:  # rounding at the very top of the cdf
        index -= 1
    return index


def prompt_token_logprobs(logits: torch.Tensor, next_ids: Sequence[int]) -> list[float]:
    """Logprob of next_ids[i] under logits[i]: logits at prompt position p score the token at p + 1
    (decoder_input_details). The prompt's logits are scored as the model gives them, unprocessed."""
    if not next_ids:
        return []
    targets = torch.tensor(next_ids, device=logits.device)[:, None]
    return torch.log_softmax(logits[: len(next_ids)], dim=-1).gather(1, targets).squeeze(1).tolist()


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


def _apply_penalties(
    scores: torch.Tensor,
    params: Sequence[SamplingParameters],
    histories: Sequence[Sequence[int]],
) -> torch.Tensor:
    # Token counts per row as one scatter: the histories of penalised rows are flattened into
    # (row, id) pairs, so no padding and no Python work per token.
    rows = [i for i, p in enumerate(params) if p.has_penalties]
    token_ids, lengths = _flatten_histories([histories[i] for i in rows], scores.device)
    row_index = torch.repeat_interleave(torch.tensor(rows, dtype=torch.long), lengths).to(scores.device)
    counts = torch.zeros_like(scores)
    counts.index_put_((row_index, token_ids), torch.ones_like(token_ids, dtype=scores.dtype), accumulate=True)
    present = counts > 0

    repetition = _column([p.repetition_penalty for p in params], scores)
    # Dividing a positive logit and multiplying a negative one both make the token less likely.
    penalised = torch.where(scores > 0, scores / repetition, scores * repetition)
    scores = torch.where(present & (repetition != 1.0), penalised, scores)
    frequency = _column([p.frequency_penalty for p in params], scores)
    presence = _column([p.presence_penalty for p in params], scores)
    # x - 0.0 is exactly x, so rows without these penalties are untouched.
    return scores - frequency * counts - presence * present.to(scores.dtype)


def _apply_grammar_masks(scores: torch.Tensor, rows: list[int], refused: torch.Tensor) -> torch.Tensor:
    refused = refused.to(scores.device, non_blocking=True)
    if len(rows) == scores.shape[0]:
        return scores.masked_fill(refused, NEG_INF)
    index = torch.tensor(rows, dtype=torch.long, device=scores.device)
    return scores.index_copy(0, index, scores.index_select(0, index).masked_fill(refused, NEG_INF))


def _flatten_histories(histories: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All ids in one tensor on `device` (one host-to-device copy for the batch), and each history's
    length (on the CPU)."""
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.long)
    flat = [token for history in histories for token in history]
    return torch.tensor(flat, dtype=torch.long, device=device), lengths


def _apply_warpers(scores: torch.Tensor, params: Sequence[SamplingParameters]) -> torch.Tensor:
    temperatures = [p.temperature for p in params]
    if any(t != 1.0 for t in temperatures):
        scores = scores / _column(temperatures, scores)  # x / 1.0 is exactly x
    if any(p.top_k > 0 for p in params):
        scores = _top_k(scores, [p.top_k for p in params])
    top_p_rows = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if top_p_rows:
        scores = _on_rows(scores, top_p_rows, [params[i].top_p for i in top_p_rows], _top_p)
    typical_rows = [i for i, p in enumerate(params) if p.typical_p < 1.0]
    if typical_rows:
        scores = _on_rows(scores, typical_rows, [params[i].typical_p for i in typical_rows], _typical_p)
    return scores


def _on_rows(
    scores: torch.Tensor,
    rows: list[int],
    values: list[float],
    warper: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply a sorting warper to the rows that use it only: a full-vocabulary sort is the costliest
    step here, and a mixed batch often has few such rows."""
    if len(rows) == scores.shape[0]:
        return warper(scores, _column(values, scores))
    index = torch.tensor(rows, dtype=torch.long, device=scores.device)
    subset = scores.index_select(0, index)
    return scores.index_copy(0, index, warper(subset, _column(values, subset)))


def _top_k(scores: torch.Tensor, top_ks: Sequence[int]) -> torch.Tensor:
    """Keep each row's k highest logits (ties with the k-th are kept too); k = 0 keeps all."""
    vocab = scores.shape[-1]
    ks = [min(k, vocab) for k in top_ks]
    kth_values = scores.topk(max(ks), dim=-1).values
    index = torch.tensor([max(k, 1) - 1 for k in ks], device=scores.device).unsqueeze(1)
    active = torch.tensor([k > 0 for k in ks], device=scores.device).unsqueeze(1)
    threshold = torch.where(active, kth_values.gather(1, index), NEG_INF)
    return scores.masked_fill(scores < threshold, NEG_INF)


def _top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_scores, order = scores.sort(dim=-1)  # ascending
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    # A token goes when everything at or below it in the ascending order still fits under 1 - p:
    # then the tokens above it already reach p without it.
    drop_sorted = cumulative <= (1.0 - top_p)
    drop_sorted[:, -1] = False  # the most likely token always stays
    drop_sorted &= top_p < 1.0
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, NEG_INF)


def _typical_p(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprise is closest to the row's entropy,
    smallest such set whose probability reaches `mass`."""
    log_probs = scores.log_softmax(dim=-1)
    probs = log_probs.exp()
    # nansum: tokens already at -inf give 0 * -inf = nan and carry no entropy.
    entropy = -(log_probs * probs).nansum(dim=-1, keepdim=True)
    distance = (-log_probs - entropy).abs()
    sorted_distance, order = distance.sort(dim=-1)
    cumulative = probs.gather(1, order).cumsum(dim=-1)
    # Index of the first token (by distance) at which the kept mass reaches `mass`.
    last = (cumulative < mass).sum(dim=-1, keepdim=True).clamp(max=scores.shape[-1] - 1)
    threshold = sorted_distance.gather(1, last)
    drop = (distance > threshold) & (mass < 1.0)
    return scores.masked_fill(drop, NEG_INF)


def _sample_rows(
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    samplers: Sequence[RequestSampler],
    rows: list[int],
) -> torch.Tensor:
    """Draw the sampled rows' tokens by inverse CDF, one uniform per row from its own generator.

    The loop over rows is only for those draws: each request must consume its own stream for its
    result to be reproducible whatever else is batched with it. It touches one CPU scalar per row;
    the search over the vocabulary is a single batched call on the logits' device.
    """
    uniforms = [samplers[i].next_uniform() for i in rows]
    row_index = torch.tensor(rows, dtype=torch.long, device=logprobs.device)
    all_rows = len(rows) == logprobs.shape[0]
    row_logprobs = logprobs if all_rows else logprobs.index_select(0, row_index)
    # Accumulate in float64 so the sum over a large vocabulary does not drift.
    cdf = row_logprobs.exp().cumsum(dim=-1, dtype=torch.float64)
    target = torch.tensor(uniforms, dtype=torch.float64, device=logprobs.device).unsqueeze(1) * cdf[:, -1:]
    # First index whose cdf exceeds the target: a token with non-zero probability by construction.
    drawn = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=cdf.shape[-1] - 1)
    # Rounding at the very top of the cdf could land on a trailing zero-probability token;
    # fall back to the row's argmax then rather than emit an impossible token.
    drawn_logprob = row_logprobs.gather(1, drawn.unsqueeze(1)).squeeze(1)
    if all_rows:
        return torch.where(torch.isfinite(drawn_logprob), drawn, ids)
    drawn = torch.where(torch.isfinite(drawn_logprob), drawn, ids.index_select(0, row_index))
    return ids.index_copy(0, row_index, drawn)


def _top_tokens(logprobs: torch.Tensor, top_n_tokens: Sequence[int]) -> list[tuple[list[int], list[float]]]:
    max_n = min(max(top_n_tokens, default=0), logprobs.shape[-1])
    if max_n <= 0:
        return [([], []) for _ in top_n_tokens]
    values, indices = logprobs.topk(max_n, dim=-1)  # sorted, best first
    all_values, all_indices = values.tolist(), indices.tolist()
    result: list[tuple[list[int], list[float]]] = []
    for n, row_values, row_indices in zip(top_n_tokens, all_values, all_indices, strict=True):
        # Tokens removed by top-k/top-p have logprob -inf: not candidates, and not valid JSON either.
        keep = [j for j in range(min(n, max_n)) if row_values[j] != NEG_INF]
        result.append(([row_indices[j] for j in keep], [row_values[j] for j in keep]))
    return result
