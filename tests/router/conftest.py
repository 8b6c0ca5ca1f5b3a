"""Shared fixtures for router tests: a tiny trained tokenizer and a validator over it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers

from router.validation import ValidationLimits, Validator, load_tokenizer
from tests.model_factory import build_tokenizer

# Small limits so that "too long" inputs are short strings.
LIMITS = ValidationLimits(max_input_tokens=32, max_total_tokens=64)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> tokenizers.Tokenizer:
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def validator(tokenizer: tokenizers.Tokenizer) -> Validator:
    return Validator(tokenizer, LIMITS)
