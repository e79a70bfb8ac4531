"""render/rank_file.py: gigatoken is built from a rank file where one is proven to build the same tokenizer as its
tokenizer.json (same ids on the probe set, and HF's), kept in the tokenizer cache; otherwise from the JSON."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from packsft import load_tokenizer
from packsft.errors import TokenizerError
from packsft.render.encoder import (
    FastEncoderRefused,
    GigatokenEncoder,
    GigatokenSource,
    probe_texts,
    rank_tokenizer,
)
from packsft.render.rank_file import rank_file
from packsft.render.tokenizer import gigatoken_key, gigatoken_source

pytest.importorskip("gigatoken", reason="gigatoken is not installed (a runtime dependency: pip install -e .)")

TEXTS = ["Hello, world! It's 2026; don't panic.", "  indented\n\tcode() {}\n", "naïve café 你好 🙂 <|im_end|>", ""]


def _tokenizer(folder):
    try:
        return load_tokenizer(str(folder), "roles", encoder="gigatoken")
    except TokenizerError as exc:
        pytest.skip(f"gigatoken does not read this tokenizer here: {exc}")


@pytest.mark.parametrize("name, scheme", [("gpt2_dir", "gpt2"), ("qwen3_dir", "qwen2")])
def test_the_rank_file_build_gives_the_json_builds_ids_and_hfs(name, scheme, request):
    tokenizer = _tokenizer(request.getfixturevalue(name))
    source = gigatoken_source(tokenizer.fingerprint, tokenizer.serialized)
    assert source.scheme == scheme and source.ranks is not None and source.ranks.exists()
    ranks, json_built = GigatokenEncoder(source), GigatokenEncoder(dataclasses.replace(source, ranks=None))
    assert (ranks.built_from, json_built.built_from) == ("ranks", "json")
    texts = [*TEXTS, *probe_texts()[:200]]
    assert ranks.encode_texts(texts) == json_built.encode_texts(texts) == tokenizer.encode_texts_hf(texts)
    assert gigatoken_source(tokenizer.fingerprint, tokenizer.serialized) == source  # kept: read back, not derived
    # Token byte lengths (the chat path places tokens by them) read from the rank file are the vocabulary's.
    assert (ranks.byte_lengths() == json_built.byte_lengths()).all()
    assert ranks.byte_lengths()[tokenizer.token_to_id("<|endoftext|>")] == len("<|endoftext|>")


def test_a_worker_that_builds_from_the_rank_file_reads_no_tokenizer_json(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PACKSFT_CACHE", str(tmp_path / "cache"))
    tokenizer = _tokenizer(gpt2_dir)
    derived = gigatoken_source(tokenizer.fingerprint, tokenizer.serialized)
    plain = tmp_path / "cache" / "gigatoken" / f"{gigatoken_key(tokenizer.fingerprint)}.plain.json"
    kept = plain.read_bytes()
    plain.write_bytes(b"damaged")  # never read: gigatoken is built from the rank file
    again = gigatoken_source(tokenizer.fingerprint, "not json either")
    assert again == derived and GigatokenEncoder(again).built_from == "ranks"
    # Where the JSON is needed after all (a rank build refused), a damaged file is derived again from the tokenizer.
    needed = gigatoken_source(tokenizer.fingerprint, tokenizer.serialized)
    assert needed.plain_json == kept


def test_a_damaged_rank_file_is_not_used(gpt2_dir):
    tokenizer = _tokenizer(gpt2_dir)
    source = gigatoken_source(tokenizer.fingerprint, tokenizer.serialized)
    assert source.ranks is not None
    kept = source.ranks.read_bytes()
    try:
        source.ranks.write_bytes(kept.replace(b" 1\n", b" 2\n", 1))
        again = gigatoken_source(tokenizer.fingerprint, tokenizer.serialized)
        assert again.ranks is None and GigatokenEncoder(again).built_from == "json"
    finally:
        source.ranks.write_bytes(kept)


def test_tokens_no_merge_makes_are_left_out_only_after_the_last_rank(gpt2_dir, demo_tokenizer_dir):
    gpt2 = GigatokenSource.of(_tokenizer(gpt2_dir).serialized)
    made = rank_file(gpt2.plain_json)
    assert made is not None and made[0].count(b"\n") == 50256  # <|endoftext|> (50256, no merge makes it) left out
    # The demo tokenizer's <|endoftext|> is its id 0: ranks without it would not start at 0.
    assert rank_file(GigatokenSource.of(_tokenizer(demo_tokenizer_dir).serialized).plain_json) is None


def test_a_rank_file_the_loader_cannot_read_is_refused_not_a_crash(gpt2_dir, tmp_path):
    spec = json.loads(GigatokenSource.of(_tokenizer(gpt2_dir).serialized).plain_json)
    content, _, _ = rank_file(json.dumps(spec).encode())
    path = tmp_path / "with-endoftext.tiktoken"
    # With the token no merge makes kept, gigatoken's loader panics (a Rust assertion, a BaseException).
    path.write_bytes(content + f"{base64.b64encode(b'<|endoftext|>').decode()} 50256\n".encode())
    with pytest.raises(FastEncoderRefused, match="rank loader"):
        rank_tokenizer(path, "gpt2", {})


def test_one_worker_looks_for_the_rank_file_the_others_go_on(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PACKSFT_CACHE", str(tmp_path / "cache"))
    tokenizer = _tokenizer(gpt2_dir)
    key = gigatoken_key(tokenizer.fingerprint)
    held = tmp_path / "cache" / "gigatoken" / f".claim-{key}"
    held.parent.mkdir(parents=True)
    held.touch()  # another worker is looking
    assert gigatoken_source(tokenizer.fingerprint, tokenizer.serialized).ranks is None
    (tmp_path / "cache" / "gigatoken" / f"{key}.json").unlink()  # as if that worker had died before writing
    held.unlink()
    looked = gigatoken_source(tokenizer.fingerprint, tokenizer.serialized)
    assert looked.scheme == "gpt2" and not held.exists()
    assert gigatoken_source(tokenizer.fingerprint, tokenizer.serialized) == looked  # its entry names the file
