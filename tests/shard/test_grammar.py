"""Grammar masks in the engine, on every model path: the random weights never produce valid JSON by
themselves, so an output that parses and validates proves the mask."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from common.sampling import SamplingParameters
from shard.cli import build_engine
from shard.distributed import Distributed
from shard.engine import Engine
from shard.grammar import allowed_tokens, llguidance_grammar
from shard.stopping import FinishReason
from shard.types import Request
from tests.model_factory import build_gpt2, build_llama

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 4},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "bc", "def"]}, "maxItems": 3},
        "kind": {"anyOf": [{"type": "boolean"}, {"$ref": "#/$defs/point"}]},
    },
    "required": ["name", "age", "tags", "kind"],
    "additionalProperties": False,
    "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number", "minimum": -1, "maximum": 1}},
                        "required": ["x"], "additionalProperties": False}},
}
JSON_GRAMMAR = llguidance_grammar("json", json.dumps(SCHEMA))
REGEX = r"(yes|no) \d{1,3}"
REGEX_GRAMMAR = llguidance_grammar("regex", REGEX)
PROMPT = [5, 6, 7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("grammar-llama"), suppress_eos=True)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt2(tmp_path_factory.mktemp("grammar-gpt2"))


def new_engine(model_dir: Path) -> Engine:
    args = argparse.Namespace(model_dir=model_dir, dtype="float32", kv_cache_bytes=4 << 20, block_size=16,
                              trust_remote_code=False)
    engine = build_engine(args, Distributed(0, 1, torch.device("cpu")))
    engine.warmup(max_input_tokens=64, max_prefill_tokens=128)
    return engine


def run(engine: Engine, requests: list[Request]) -> dict[int, tuple[str, FinishReason]]:
    """Every request to its end in one running batch: id -> (text, finish reason)."""
    done: dict[int, tuple[str, FinishReason]] = {}
    result = engine.prefill(1, requests, None)
    while True:
        for g in result.generations:
            if g.generated_text is not None:
                done[g.request_id] = (g.generated_text.text, g.generated_text.finish_reason)
        if result.batch is None:
            return done
        result = engine.decode([result.batch.id])


def constrained(rid: int, grammar: str, *, seed: int | None = None, max_new: int = 200) -> Request:
    params = SamplingParameters(grammar=grammar, do_sample=seed is not None, seed=seed,
                                temperature=1.3 if seed is not None else 1.0)
    return Request(id=rid, input_ids=PROMPT, max_new_tokens=max_new, parameters=params)


def check_outputs(engine: Engine) -> None:
    # Greedy and sampled rows, JSON and regex, side by side with a free row in one batch.
    requests = [constrained(1, JSON_GRAMMAR), constrained(2, JSON_GRAMMAR, seed=7),
                constrained(3, REGEX_GRAMMAR, seed=3), Request(id=4, input_ids=PROMPT, max_new_tokens=30)]
    done = run(engine, requests)
    for rid in (1, 2):
        text, reason = done[rid]
        jsonschema.validate(json.loads(text), SCHEMA)
        assert reason == FinishReason.EOS_TOKEN, text  # the grammar completed: not cut by length
    text, reason = done[3]
    assert re.fullmatch(REGEX, text), text
    assert reason == FinishReason.EOS_TOKEN
    assert done[4][1] == FinishReason.LENGTH  # the free row is untouched (EOS is suppressed in this model)


def test_one_call_decode_path_masks(llama_dir: Path) -> None:
    engine = new_engine(llama_dir)
    assert engine.runner.model.one_call_layers is not None  # type: ignore[attr-defined]
    check_outputs(engine)


def test_layer_by_layer_path_masks(llama_dir: Path) -> None:
    engine = new_engine(llama_dir)
    engine.runner.model.one_call_layers = None  # type: ignore[attr-defined]
    check_outputs(engine)


def test_generic_transformers_path_masks(gpt2_dir: Path) -> None:
    check_outputs(new_engine(gpt2_dir))


def test_free_model_output_is_not_json(llama_dir: Path) -> None:
    # The control: without the mask these weights do not write JSON, so the tests above test the mask.
    engine = new_engine(llama_dir)
    text, _ = run(engine, [Request(id=1, input_ids=PROMPT, max_new_tokens=40)])[1]
    with pytest.raises(ValueError):
        json.loads(text)


def test_running_out_of_tokens_mid_structure_is_length_with_the_text_so_far(llama_dir: Path) -> None:
    engine = new_engine(llama_dir)
    text, reason = run(engine, [constrained(1, JSON_GRAMMAR, max_new=5)])[1]
    assert reason == FinishReason.LENGTH
    assert '{"name": "'.startswith(text) or text.startswith('{"name": "')


def test_same_seed_same_constrained_text_alone_or_batched(llama_dir: Path) -> None:
    engine = new_engine(llama_dir)
    alone = run(engine, [constrained(9, JSON_GRAMMAR, seed=11)])[9]
    batched = run(engine, [constrained(8, REGEX_GRAMMAR, seed=1), constrained(9, JSON_GRAMMAR, seed=11),
                           Request(id=10, input_ids=PROMPT, max_new_tokens=8)])[9]
    assert alone == batched


def test_mask_bits_map_to_token_ids() -> None:
    masks = np.array([[0b101, 0], [0, -(1 << 31)]], dtype=np.int32)  # bit 31 is the sign bit
    allowed = allowed_tokens(masks, 64)
    assert np.flatnonzero(allowed[0]).tolist() == [0, 2]
    assert np.flatnonzero(allowed[1]).tolist() == [63]


def test_a_stop_sequence_still_ends_a_constrained_output(llama_dir: Path) -> None:
    engine = new_engine(llama_dir)
    request = Request(id=1, input_ids=PROMPT, max_new_tokens=50, stop_sequences=(" ",),
                      parameters=SamplingParameters(grammar=REGEX_GRAMMAR, do_sample=True, seed=2, temperature=1.3))
    text, reason = run(engine, [request])[1]
    assert reason == FinishReason.STOP_SEQUENCE and text in ("yes", "no")


def test_ignore_eos_does_not_outlast_a_complete_grammar(llama_dir: Path) -> None:
    engine = new_engine(llama_dir)
    request = Request(id=1, input_ids=PROMPT, max_new_tokens=200, ignore_eos_token=True,
                      parameters=SamplingParameters(grammar=REGEX_GRAMMAR))
    text, reason = run(engine, [request])[1]
    assert re.fullmatch(REGEX, text) and reason == FinishReason.EOS_TOKEN
