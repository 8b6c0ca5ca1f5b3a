"""Constrained decoding: which tokens keep a request's output inside its grammar.

The router validates every grammar and sends it compiled to llguidance's format (JSON schemas, regexes
and the tool-call grammars all become one grammar text). Here each constrained request gets its own
llguidance matcher: the matcher says which tokens may come next (a bitmask over the vocabulary), and
consumes the token that was chosen. Compiled grammars are cached by their text; a request's matcher is a
deep copy of the cached one, which shares its lexer (the costly part) with every other copy.

Masks are computed on a worker thread while the step's forward pass runs (llguidance releases the GIL),
and applied to the logits in the sampler (shard/sampling.py) with torch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import llguidance
import numpy as np
import torch
from tokenizers import Tokenizer

from common.grammar import INITIAL_LEXER_FUEL, JSON_COMPILE_OPTIONS

log = logging.getLogger(__name__)

# Compiled grammars kept for reuse: a service usually sees a handful of schemas again and again.
GRAMMAR_CACHE_SIZE = 256
# The router sends llguidance's grammar text; TGI's shard protocol sends a JSON schema or a regex.
GRAMMAR_KINDS = ("llguidance", "json", "regex")


class GrammarError(ValueError):
    """A grammar the engine cannot compile (the router validates them, so this is a bug or a version skew)."""


def llguidance_grammar(kind: str, text: str) -> str:
    """The llguidance grammar text for a grammar as the wire carries it."""
    if kind == "json":
        return llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_COMPILE_OPTIONS)  # type: ignore[arg-type]
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(text)
    return text


class GrammarCompiler:
    """Matchers for the requests of one model: its tokenizer as llguidance sees it, and the compile cache."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        # The logits may be wider than the tokenizer (vocabularies padded to a multiple of 64); llguidance
        # never allows the padding ids.
        self.vocab_size = max(vocab_size, tokenizer.get_vocab_size(with_added_tokens=True))
        self._tokenizer_json = tokenizer.to_str()
        self._eos = sorted(eos_token_ids)
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    @property
    def lltokenizer(self) -> llguidance.LLTokenizer:
        # ~0.3 s for a 49k vocabulary: the engine's warmup builds it.
        if self._lltokenizer is None:
            self._lltokenizer = llguidance.LLTokenizer(self._tokenizer_json, n_vocab=self.vocab_size,
                                                       eos_token=self._eos or None)
        return self._lltokenizer

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher at the start of `grammar` (llguidance grammar text)."""
        compiled = self._compiled.get(grammar)
        if compiled is None:
            compiled = llguidance.LLMatcher(self.lltokenizer, grammar, log_level=0,
                                            limits=llguidance.LLParserLimits(initial_lexer_fuel=INITIAL_LEXER_FUEL))
            if compiled.is_error():
                raise GrammarError(compiled.get_error())
            self._compiled[grammar] = compiled
            if len(self._compiled) > GRAMMAR_CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return compiled.deep_copy()

    @property
    def mask_words(self) -> int:
        return (self.vocab_size + 31) // 32


class MaskWorker:
    """Fills the bitmasks of a step's constrained rows on a thread of its own, while the forward runs."""

    def __init__(self, compiler: GrammarCompiler) -> None:
        self.compiler = compiler
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")

    def start(self, matchers: Sequence[llguidance.LLMatcher]) -> Future[torch.Tensor]:
        """Per matcher, the tokens that may not come next: [len(matchers), vocab_size] booleans (True: refused),
        ready for the sampler's masked_fill."""
        return self._thread.submit(self._fill, list(matchers))

    def _fill(self, matchers: list[llguidance.LLMatcher]) -> torch.Tensor:
        masks = np.empty((len(matchers), self.compiler.mask_words), dtype=np.int32)
        row_bytes = masks.shape[1] * 4
        for i, matcher in enumerate(matchers):
            matcher.unsafe_compute_mask_ptr(masks[i].ctypes.data, row_bytes)
        return torch.from_numpy(np.logical_not(allowed_tokens(masks, self.compiler.vocab_size)))


def allowed_tokens(masks: np.ndarray, vocab: int) -> np.ndarray:
    """[rows, words] int32 bitmasks (bit i of word w allows token 32 * w + i) -> [rows, vocab] booleans.

    numpy's unpackbits does it in microseconds; the same with torch shifts took milliseconds per row."""
    return np.unpackbits(masks.view(np.uint8), axis=1, bitorder="little")[:, :vocab].view(np.bool_)


def consume(matcher: llguidance.LLMatcher, token_id: int) -> bool:
    """Advance the matcher by the chosen token; True when the grammar is complete (nothing may follow).

    The mask let only valid tokens through, so a refusal means a bug: it is logged and the request ends
    rather than continuing outside its grammar."""
    if not matcher.consume_token(token_id):
        log.error("grammar refused token %d that its own mask allowed: %s", token_id, matcher.get_error())
        return True
    return matcher.is_stopped()
