"""How the next token is chosen: the one record the router validates into and the shard samples from.

Plain values only. The router resolves the request's defaults into it (router/validation.py) and sends
it as a `NextTokenChooserParameters`; the shard's servicer reads that back into the same record, and
shard/sampling.py applies it to the logits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParameters:
    """Neutral values mean 'off'. `seed` is None when nothing is drawn (greedy); the shard seeds 0 then."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    do_sample: bool = False
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # llguidance grammar text the output must follow (router/grammar.py compiles it); "" for free text.
    grammar: str = ""

    @property
    def has_warpers(self) -> bool:
        return self.temperature != 1.0 or self.top_k > 0 or self.top_p < 1.0 or self.typical_p < 1.0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    @property
    def sampling(self) -> bool:
        """Sample rather than take the argmax. As in TGI, setting any warper turns sampling on
        (CONTRACT section 1), so a greedy row always has neutral warpers."""
        return self.do_sample or self.has_warpers
