"""Fixtures of the render tests: tokenizers loaded once per session."""

from __future__ import annotations

import pytest

from packsft import load_tokenizer


@pytest.fixture(scope="session")
def chatml(chatml_dir):
    """The ChatML test tokenizer with its fast encoder proven (the fast chat path)."""
    tokenizer = load_tokenizer(str(chatml_dir), "chat", encoder="auto")
    assert tokenizer.encoder == "gigatoken", tokenizer.encoder_note
    return tokenizer
