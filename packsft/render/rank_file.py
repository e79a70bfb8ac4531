"""gigatoken built from a .tiktoken rank file: the same byte-level BPE in about half the time its tokenizer.json takes.

Every worker builds gigatoken before it encodes anything; from qwen3's tokenizer.json that takes 0.36-0.47 s, from a
rank file (base64 token bytes and rank per line, ranks = ids) 0.15-0.24 s. A rank file holds no pretokenizer:
gigatoken's loader takes one of the schemes it names, so which one builds the same tokenizer is found once per
tokenizer (`proven_ranks`, kept in the tokenizer cache by render/tokenizer.gigatoken_source): the probe set is
encoded with each candidate and with the tokenizer.json build, and the first that gives the same ids on every probe
is kept. A tokenizer whose file gigatoken's loader does not read as the same tokenizer keeps the tokenizer.json
build; `rank_file` refuses one where

- the tiktoken backend's checks refuse it (encoder.bpe_spec: byte-level tokens, all 256 bytes, ranks in merge
  order, no added token that strips spaces or is a prefix of another);
- its ranks are not dense from 0 (the loader refuses gaps), a token longer than one byte is made by no merge (the
  loader asserts it; such tokens are never encoded from text, so the last ranks may be: GPT-2's `<|endoftext|>` is
  left out), or an added token is a rank.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path

from packsft.render.encoder import (
    GPT2_PATTERN,
    FastEncoderRefused,
    GigatokenEncoder,
    GigatokenSource,
    bpe_spec,
    merge_pair,
    probe_texts,
)

# gigatoken's names for the pretokenizers its rank loader knows, the likeliest first (GPT-2's pattern: "gpt2").
RANK_SCHEMES = ("qwen2", "gpt4", "o200k", "qwen35", "olmo3", "deepseek_v3", "nemotron", "kimi")


def rank_file(plain_json: bytes) -> tuple[bytes, dict[str, int], str] | None:
    """The rank file of the tokenizer gigatoken is built from (`GigatokenSource.plain_json`), its added tokens
    (content -> id, read as control tokens as the JSON build reads them) and its pre-tokenizer's pattern, or None
    where the loader cannot read it as the same tokenizer."""
    parsed = json.loads(plain_json)  # once: qwen3's takes 0.33 s
    try:
        spec = bpe_spec(parsed)
    except FastEncoderRefused:
        return None
    model = parsed["model"]
    made = {"".join(merge_pair(merge)) for merge in model.get("merges") or []}
    by_rank = sorted(spec.ranks.items(), key=lambda item: item[1])
    texts = sorted(model["vocab"], key=model["vocab"].__getitem__)
    if [rank for _, rank in by_rank] != list(range(len(by_rank))) or spec.special_tokens:
        return None
    unmade = [rank for text, (token, rank) in zip(texts, by_rank) if len(token) > 1 and text not in made]
    # Tokens no merge makes are never encoded from text: the last ones may be left out (GPT-2's <|endoftext|>).
    if unmade != list(range(len(by_rank) - len(unmade), len(by_rank))):
        return None
    by_rank = by_rank[:len(by_rank) - len(unmade)]
    if any(token_id < len(by_rank) for token_id in spec.content_tokens.values()):
        return None
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in by_rank]
    return ("\n".join(lines) + "\n").encode(), dict(spec.content_tokens), spec.pattern


def proven_ranks(source: GigatokenSource, path: Path) -> GigatokenSource | None:
    """`source` built from a rank file written at `path`, with the first scheme that encodes every probe as its
    tokenizer.json build does; None (and no file) where there is none. The file is searched with under a name of
    this process's own and renamed into place once proven: workers deriving it at once never read half of one."""
    made = rank_file(source.plain_json)
    if made is None:
        return None
    content, added, pattern = made
    own = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_bytes(content)
        scheme = _proven_scheme(source, own, added, pattern)
        if scheme is None:
            return None
        os.replace(own, path)
    except OSError:
        return None  # a cache that cannot be written: the JSON build
    finally:
        own.unlink(missing_ok=True)
    return dataclasses.replace(source, ranks=path, scheme=scheme, rank_added=added)


def _proven_scheme(source: GigatokenSource, ranks: Path, added: dict[str, int], pattern: str) -> str | None:
    probes = probe_texts()
    expected = GigatokenEncoder(source).encode_texts(probes)
    for scheme in ("gpt2",) if pattern == GPT2_PATTERN else RANK_SCHEMES:
        encoder = GigatokenEncoder(dataclasses.replace(source, ranks=ranks, scheme=scheme, rank_added=added))
        if encoder.built_from == "ranks" and encoder.encode_texts(probes) == expected:
            return scheme
    return None
