"""The omission marker, "[… N tokens omitted] ", put where tokens of a long message are left out, and what encodes it.

A re-pack encodes nothing but these markers, and building the whole tokenizer for them took about a third of its time
(qwen3: 0.3-0.6 s). A BPE tokenizer cut down to the tokens a marker can be made of encodes every marker exactly as the
whole one does: BPE splits a text into pre-tokens, each into characters, and merges pairs by rank, so every token and
merge it uses is made of the text's characters; the cut-down tokenizer keeps all of those, with their ids and ranks.

    tokenizer.json (151,669 tokens, 151,387 merges)  --marker_spec-->  the tokens and merges made of the characters of
                                                                       "[… 0123456789 tokens omitted] " (a few hundred)

`marker_spec` builds it where the whole tokenizer is at hand (a pack) and proves it on PROOF_COUNTS against that
tokenizer; the rendered-token store keeps it (store/rendered.py), and a re-pack encodes its markers with it. The
tokenizer cache keeps it too (`kept_marker_spec`), so that a new store of the same tokenizer does not make it again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from tokenizers import Tokenizer

from packsft.render.encoder import byte_decoder, merge_pair
from packsft.render.tokenizer_cache import cache_key, read_entry, write_entry

OMITTED_MARKER = "[… {n} tokens omitted] "
# The counts a cut-down tokenizer is proven on: every count up to 2,000 (every digit string up to four digits long
# occurs), and longer ones of every length up to ten digits.
PROOF_COUNTS = (*range(2001), 9999, 10000, 12345, 65536, 99999, 131072, 987654, 1048576, 16777216, 123456789,
                2147483647)
BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")

Marker = Callable[[int], list[int]]


def marker_texts(counts: tuple[int, ...] | list[int]) -> list[str]:
    return [OMITTED_MARKER.format(n=n) for n in counts]


def marker_spec(serialized: str, encode: Callable[[list[str]], list[list[int]]]) -> str | None:
    """The tokenizer JSON `serialized` cut down to the tokens (and merges) made of a marker's characters, where it
    encodes every count of PROOF_COUNTS as `encode` does; None for a tokenizer that is not BPE, or where it does not."""
    spec = json.loads(serialized)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return None
    alphabet = _alphabet(model)
    keep = {token: index for token, index in model["vocab"].items()
            if set(token) <= alphabet or (model.get("byte_fallback") and BYTE_FALLBACK.fullmatch(token))
            or token == model.get("unk_token")}
    merges = [merge for merge in model.get("merges") or [] if "".join(merge_pair(merge)) in keep]
    spec["model"] = {**model, "vocab": keep, "merges": merges}
    reduced = json.dumps(spec, ensure_ascii=False)
    texts = marker_texts(PROOF_COUNTS)
    try:
        same = _encode(Tokenizer.from_str(reduced), texts) == encode(texts)
    except Exception:  # noqa: BLE001 - a tokenizer the cut-down JSON does not load as: no cut-down encoder
        return None
    return reduced if same else None


def kept_marker_spec(fingerprint: str, serialized: str, encode: Callable[[list[str]], list[list[int]]]) -> str | None:
    """`marker_spec` of the tokenizer with this fingerprint, from the tokenizer cache where kept, else made and kept
    (it parses the whole tokenizer JSON: 0.17 s for GPT-2, 0.3 s for qwen3, once per tokenizer, not per pack)."""
    key = cache_key("marker", {"fingerprint": fingerprint})
    entry = read_entry("markers", key)
    if entry is not None and isinstance(entry.get("spec"), (str, type(None))):
        return entry["spec"]
    spec = marker_spec(serialized, encode)
    write_entry("markers", key, {"spec": spec})
    return spec


def marker_encoder(spec: str) -> Marker:
    """Encodes markers with a cut-down tokenizer (`marker_spec`), each count once."""
    tokenizer = Tokenizer.from_str(spec)
    cache: dict[int, list[int]] = {}

    def marker(n: int) -> list[int]:
        if n not in cache:
            cache[n] = _encode(tokenizer, marker_texts([n]))[0]
        return cache[n]

    return marker


def _alphabet(model: dict[str, Any]) -> set[str]:
    """The characters a marker's tokens can be made of: its own, their byte-level stand-ins, SentencePiece's space,
    and the model's subword prefix and word suffix."""
    text = OMITTED_MARKER.format(n="0123456789")
    stand_ins = {char for char, byte in byte_decoder().items() if byte in text.encode("utf-8")}
    extra = f"{model.get('continuing_subword_prefix') or ''}{model.get('end_of_word_suffix') or ''}\u2581"
    return set(text) | stand_ins | set(extra)


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """As `PackTokenizer.encode_texts_hf`: no special tokens added, special-token strings encoded as text."""
    tokenizer.encode_special_tokens = True
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
