"""The fast backends (render/encoder.py): gigatoken where proven, tiktoken where gigatoken is refused, HF otherwise.

Hermetic: the demo tokenizer (byte-level BPE), a SentencePiece-style byte-fallback BPE built here as Llama 2's
tokenizer.json is laid out, and a byte-level BPE behind a regex gigatoken has no pretokenizer for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from packsft import load_tokenizer
from packsft.errors import TokenizerError
from packsft.render import encoder as encoder_module
from packsft.render.encoder import BACKENDS, GigatokenEncoder, probe_texts

# Texts that hold special-token strings: gigatoken would read them as control tokens if it knew them.
SPECIAL_CONTENT = ["Say <|user|> and <|assistant|>", "<|endoftext|>", "a<|beginoftext|>b<|pad|>", "<s>x</s>", ""]
CORPUS = probe_texts()[:21] * 5 + ["the quick brown fox jumps over the lazy dog"] * 20


def _save(folder: Path, spec: dict, eos: str, bos: str | None = None) -> Path:
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, **({"bos_token": bos} if bos else {})}))
    return folder


@pytest.fixture(scope="module")
def byte_fallback_dir(tmp_path_factory) -> Path:
    """A SentencePiece-style BPE as Llama 2 / Mistral v1 ship it: U+2581 for spaces, a prepended one, <0xNN> bytes."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    spec = json.loads(tok.to_str())
    base = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {token: i for i, token in enumerate(base)}
    for token, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    spec["model"].update(vocab=vocab, byte_fallback=True, fuse_unk=True, unk_token="<unk>")
    spec["added_tokens"] = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, token in enumerate(base[:3])]
    spec["decoder"] = json.loads(decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)]).__getstate__())
    return _save(tmp_path_factory.mktemp("byte-fallback") / "tok", spec, "</s>", "<s>")


@pytest.fixture(scope="module")
def odd_regex_dir(tmp_path_factory) -> Path:
    """A byte-level BPE behind a regex of its own (digits one by one): tiktoken runs any regex, gigatoken refuses."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d|\p{L}+| ?[^\s\p{L}\d]+|\s+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return _save(tmp_path_factory.mktemp("odd-regex") / "tok", json.loads(tok.to_str()), "<|endoftext|>")


def test_auto_takes_gigatoken_and_content_specials_stay_plain(demo_tokenizer_dir):
    tokenizer = load_tokenizer(str(demo_tokenizer_dir), "roles", encoder="auto")
    assert tokenizer.encoder == BACKENDS[0] == "gigatoken" and tokenizer.encoder_note is None
    texts = [*SPECIAL_CONTENT, *probe_texts()[:40]]
    ids = tokenizer.encode_texts(texts)
    assert ids == tokenizer.encode_texts_hf(texts)
    assert not {t for x in ids[:4] for t in x} & set(tokenizer.special_ids.values())
    flat, lengths = tokenizer.encode_texts_flat(texts)
    assert flat.dtype == np.int32 and lengths.tolist() == list(map(len, ids))
    assert flat.tolist() == [t for x in ids for t in x]
    # The same texts once more: gigatoken's caches change no id.
    assert tokenizer.encode_texts(texts) == ids


def test_each_backend_can_be_named(demo_tokenizer_dir):
    named = {backend: load_tokenizer(str(demo_tokenizer_dir), "roles", encoder=backend) for backend in BACKENDS}
    assert {backend: t.encoder for backend, t in named.items()} == {b: b for b in BACKENDS}
    texts = SPECIAL_CONTENT + ["caf\u00e9 \u4e2d\u6587 \U0001f600 x\ny"]
    assert named["gigatoken"].encode_texts(texts) == named["tiktoken"].encode_texts(texts)


def test_byte_fallback_tokenizers_get_gigatoken(byte_fallback_dir):
    tokenizer = load_tokenizer(str(byte_fallback_dir), "roles", encoder="auto")
    assert tokenizer.encoder == "gigatoken", tokenizer.encoder_note
    texts = [*SPECIAL_CONTENT, "h\u00e9llo w\u00f6rld \u4e2d\u6587 \U0001f600", "  two  spaces\n\ttab", *probe_texts()[:30]]
    ids = tokenizer.encode_texts(texts)
    assert ids == tokenizer.encode_texts_hf(texts)
    byte_tokens = {tokenizer.backend.token_to_id(f"<0x{b:02X}>") for b in "\u00e9".encode()}
    assert byte_tokens <= set(ids[5])  # é is not in the vocabulary: its bytes are
    assert not tokenizer.fast.byte_level  # the chat path places tokens by their bytes: not these
    with pytest.raises(TokenizerError, match="tiktoken: normalizer .Sequence. is not reproduced"):
        load_tokenizer(str(byte_fallback_dir), "roles", encoder="tiktoken")


def test_a_regex_gigatoken_does_not_read_falls_to_tiktoken(odd_regex_dir):
    tokenizer = load_tokenizer(str(odd_regex_dir), "roles", encoder="auto")
    assert tokenizer.encoder == "tiktoken"
    texts = ["abc 123 <|endoftext|> x", *probe_texts()[:30]]
    assert tokenizer.encode_texts(texts) == tokenizer.encode_texts_hf(texts)
    with pytest.raises(TokenizerError, match="gigatoken: gigatoken does not read it: Unknown pre_tokenizer Split regex"):
        load_tokenizer(str(odd_regex_dir), "roles", encoder="gigatoken")


def test_nfc_is_hfs_own_not_gigatokens(demo_tokenizer_dir):
    # U+0898 U+0899: where HF's NFC and other Unicode versions disagree (the probe sweep found gigatoken's does).
    spec = json.loads((demo_tokenizer_dir / "tokenizer.json").read_text()) | {"normalizer": {"type": "NFC"}}
    reference = Tokenizer.from_str(json.dumps(spec))
    encoder = GigatokenEncoder(json.dumps(spec))
    texts = ["\u0898\u0899 a\u0308", "cafe\u0301", "plain"]
    assert encoder.encode_texts(texts) == [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]


def test_gigatoken_is_rebuilt_to_bound_its_caches_and_ids_stay(demo_tokenizer_dir, monkeypatch):
    encoder = GigatokenEncoder((demo_tokenizer_dir / "tokenizer.json").read_text())
    texts = probe_texts()[:40]
    expected = encoder.encode_texts(texts)
    monkeypatch.setattr(encoder_module, "GIGATOKEN_REBUILD_CHARS", sum(map(len, texts)) // 3)
    built = encoder._tokenizer
    ids, lengths = encoder.encode_texts_flat(texts)  # over the bound: encoded by a fresh tokenizer
    assert encoder._tokenizer is not built and encoder._chars == 0
    assert ids.tolist() == [t for x in expected for t in x] and lengths.tolist() == list(map(len, expected))
    assert encoder.encode_texts(texts) == expected
