"""The omission marker's cut-down tokenizer (render/markers.py): it encodes every marker as the whole tokenizer does,
and is refused where its proof fails or the model is not BPE."""

from __future__ import annotations

import json
import random

import pytest

import packsft.render.markers as markers
from packsft.render.markers import marker_encoder, marker_spec, marker_texts
from packsft.render.tokenizer import load_tokenizer


@pytest.fixture(params=["demo", "gpt2", "qwen3"])
def tokenizer(request):
    folder = request.getfixturevalue(f"{request.param}_tokenizer_dir" if request.param == "demo" else
                                     f"{request.param}_dir")
    return load_tokenizer(str(folder), "chat" if request.param == "qwen3" else "roles", encoder="hf")


def test_the_cut_down_tokenizer_encodes_every_marker_as_the_whole_one(tokenizer):
    spec = marker_spec(tokenizer.serialized, tokenizer.encode_texts_hf)
    assert spec is not None
    whole = json.loads(tokenizer.serialized)["model"]["vocab"]
    assert len(json.loads(spec)["model"]["vocab"]) < len(whole) / 5
    counts = [random.Random(7).randrange(1, 10**9) for _ in range(2000)] + list(range(5000, 7000))
    marker = marker_encoder(spec)
    assert [marker(n) for n in counts] == tokenizer.encode_texts_hf(marker_texts(counts))


def test_a_cut_down_tokenizer_that_encodes_otherwise_is_refused(demo_tokenizer_dir, monkeypatch):
    tokenizer = load_tokenizer(str(demo_tokenizer_dir), "roles", encoder="hf")
    # Leave the digits out of the alphabet: every count then encodes otherwise, and the proof refuses the result.
    alphabet = markers._alphabet
    monkeypatch.setattr(markers, "_alphabet", lambda model: alphabet(model) - set("0123456789"))
    assert marker_spec(tokenizer.serialized, tokenizer.encode_texts_hf) is None


def test_a_tokenizer_that_is_not_bpe_has_no_cut_down_marker_encoder():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    word_level = Tokenizer(WordLevel({"[UNK]": 0, "omitted": 1}, unk_token="[UNK]")).to_str()
    assert marker_spec(word_level, lambda texts: [[0]] * len(texts)) is None
