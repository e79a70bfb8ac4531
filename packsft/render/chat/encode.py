"""Tokenize chat-template renderings: ids and character offsets, the template's own special tokens special
and every message content plain text.

    rendering:  <|im_start|>user\\nSay <|im_end|> now<|im_end|>\\n<|im_start|>assistant\\nOk<|im_end|>\\n
    content:                     |<-- content 0 -->|                             |<>|
    cuts:       |<|im_start|>|                     |<|im_end|>|  |<|im_start|>|      |<|im_end|>|
    runs:                    |user\\nSay <|im_end|> now|          |\\n|            |assistant\\nOk|          |\\n|

The content's `<|im_end|>` lies inside a content span, so it is no cut: it is plain text of its run.

- `HfRenderingEncoder`, the reference: the Rust tokenizer encodes each rendering with offsets; a special token
  that came from a content is re-encoded as plain text together with the text around it.
- `FastRenderingEncoder`: special-token strings outside content spans cut each rendering into runs; the fast
  encoder (encoder.FastEncoder, proven equal to HF on content; a byte-level one, so that token byte lengths
  place the tokens) encodes all runs of a batch in one call, matching
  non-special added tokens (`<think>`) as HF does, and the offsets come from each token's byte length. This
  is what HF does too: it extracts added tokens first and encodes the text between them. A rendering the
  fast path cannot place exactly (a run the normalizer changes, so offsets would shift; text that is not
  valid UTF-8; a special-token string across a content's edge) goes the HF way.

Both give the same ids and offsets (tests on ShareGPT with qwen3; `chat_proof.fast_chat_difference` at load).
`rendering_encoder` chooses one for a tokenizer.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

from packsft.config import Encoder
from packsft.render.encoder import NFC_INERT, FastEncoder
from packsft.render.tokenizer import TOKEN_ID_DTYPE, PackTokenizer

Spans = list[tuple[int, int]]
Encoded = tuple[np.ndarray, np.ndarray]  # ids (TOKEN_ID_DTYPE) and character offsets (n, 2)


class RenderingEncoder(Protocol):
    """Encodes renderings of one tokenizer: the template's special tokens special, the record's own strings plain."""

    tokenizer: PackTokenizer
    special_ids: np.ndarray  # ids of the tokenizer's special tokens, sorted

    def encode(self, texts: list[str], spans: list[Spans]) -> list[Encoded]:
        """Ids and offsets of each rendering; `spans` are the character spans of its message contents."""
        ...


# One rendering encoder per tokenizer and process: building the fast one's tables costs ~0.3 s, and a worker
# packs many units.
_ENCODERS: dict[tuple[str, str, Encoder], RenderingEncoder] = {}


def rendering_encoder(tokenizer: PackTokenizer, encoder: Encoder = "auto") -> RenderingEncoder:
    """The rendering encoder of this tokenizer: `FastRenderingEncoder` for "fast" (ValueError where the
    tokenizer's fast encoder is not in use or not byte-level), `HfRenderingEncoder` for "hf", and "auto" the
    fast one where it could be "fast"."""
    key = (tokenizer.fingerprint, tokenizer.encoder, encoder)
    cached = _ENCODERS.get(key)
    if cached is None or cached.tokenizer is not tokenizer:
        fast = tokenizer.fast if encoder != "hf" else None
        if encoder == "fast" and fast is None:
            raise ValueError("the fast encoder is not in use for this tokenizer")
        if fast is not None and not fast.byte_level:
            if encoder == "fast":
                raise ValueError(f"the {fast.backend} encoder of this tokenizer is not byte-level: the fast chat path "
                                 "cannot place its tokens")
            fast = None
        cached = FastRenderingEncoder(tokenizer, fast) if fast is not None else HfRenderingEncoder(tokenizer)
        _ENCODERS.clear()
        _ENCODERS[key] = cached
    return cached


class HfRenderingEncoder:
    """The reference: one batch call into the Rust tokenizer, then plain text where a content made a special token."""

    def __init__(self, tokenizer: PackTokenizer) -> None:
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend
        added = self.backend.get_added_tokens_decoder()
        strings = {token.content for token in added.values() if token.special} | set(tokenizer.special_tokens)
        self.special_ids = np.array(
            sorted({i for s in strings if (i := self.backend.token_to_id(s)) is not None}), np.int64
        )
        self.plain: Any = None  # the Rust tokenizer with special-token strings as text, built on first need

    def encode(self, texts: list[str], spans: list[Spans]) -> list[Encoded]:
        """Ids and offsets of each rendering; `spans` are the character spans of its message contents."""
        # transformers leaves this switch as its last call set it; the template's own special tokens must be special.
        self.backend.encode_special_tokens = False
        encodings = self.backend.encode_batch(texts, add_special_tokens=False) if texts else []
        out = []
        for text, encoding, located in zip(texts, encodings, spans):
            ids = np.asarray(encoding.ids, TOKEN_ID_DTYPE)
            offsets = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)
            from_content = self._special_in_content(ids, offsets, located)
            if from_content.any():
                ids, offsets = self._encode_plain_between(text, ids, offsets, from_content)
            out.append((ids, offsets))
        return out

    def _special_in_content(self, ids: np.ndarray, offsets: np.ndarray, located: Spans) -> np.ndarray:
        """Per token: a special token whose characters lie inside a message content."""
        special = np.isin(ids, self.special_ids)
        if not special.any() or not located:
            return np.zeros(len(ids), bool)
        bounds = np.asarray(located, np.int64).reshape(-1, 2)
        inside = np.zeros(len(ids), bool)
        for at in np.flatnonzero(special).tolist():
            start, end = offsets[at]
            inside[at] = bool(((bounds[:, 0] <= start) & (end <= bounds[:, 1]) & (bounds[:, 0] < bounds[:, 1])).any())
        return inside

    def _encode_plain_between(self, text: str, ids: np.ndarray, offsets: np.ndarray,
                              from_content: np.ndarray) -> Encoded:
        """Keep the template's special tokens; tokenize the text between them as plain text."""
        if self.plain is None:
            self.plain = plain_text_backend(self.tokenizer.serialized)
        keep = np.flatnonzero(np.isin(ids, self.special_ids) & ~from_content)
        cuts = [(int(offsets[k, 0]), int(offsets[k, 1])) for k in keep.tolist()]
        id_parts, offset_parts, cursor = [], [], 0
        for k, (start, end) in zip(keep.tolist() + [None], cuts + [(len(text), len(text))]):
            if start > cursor:
                piece = self.plain.encode(text[cursor:start], add_special_tokens=False)
                id_parts.append(np.asarray(piece.ids, TOKEN_ID_DTYPE))
                offset_parts.append(np.asarray(piece.offsets, np.int64).reshape(-1, 2) + cursor)
            if k is not None:
                id_parts.append(ids[k : k + 1])
                offset_parts.append(offsets[k : k + 1])
            cursor = max(cursor, end)
        return np.concatenate(id_parts), np.concatenate(offset_parts)


class FastRenderingEncoder:
    """`HfRenderingEncoder`'s ids and offsets, by the fast encoder over the runs between the template's special
    tokens (proven equal at load: proof.py)."""

    def __init__(self, tokenizer: PackTokenizer, fast: FastEncoder) -> None:
        self.tokenizer = tokenizer
        self.fast = fast
        self.hf = HfRenderingEncoder(tokenizer)  # for the renderings the fast path cannot place exactly
        self.special_ids = self.hf.special_ids
        self.cut_ids = fast.special_tokens
        names = sorted(fast.special_tokens, key=len, reverse=True)  # leftmost-longest, as HF matches
        self.cut_pattern = re.compile("|".join(map(re.escape, names))) if names else None
        self.byte_lengths = fast.byte_lengths().astype(np.int32)  # a token's bytes: gathered per token, kept small

    def encode(self, texts: list[str], spans: list[Spans]) -> list[Encoded]:
        """Ids and offsets of each rendering; `spans` are the character spans of its message contents.

        All runs of the batch are encoded in one call and placed with array operations (`_place`);
        renderings the fast path cannot place exactly go the HF way.
        """
        runs: list[str] = []
        cuts: list[int] = []  # per item of the placed texts, back to back: a template token's id, or -1 for a run
        items = np.zeros(len(texts), np.int64)  # items per text
        fallback: list[int] = []
        for index, (text, located) in enumerate(zip(texts, spans)):
            layout = self._layout(text, located)
            pieces = [text[lo:hi] for lo, hi, cut in layout if cut < 0] if layout is not None else []
            if layout is None or not (text.isascii() or all(map(self._exact, pieces))):
                fallback.append(index)
                continue
            runs.extend(pieces)
            cuts.extend(cut for _, _, cut in layout)
            items[index] = len(layout)
        out_ids, out_offsets, per_text = self._place(texts, runs, np.asarray(cuts, np.int64), items)
        bounds = np.cumsum(per_text)
        slow = dict(zip(fallback, self.hf.encode([texts[i] for i in fallback], [spans[i] for i in fallback])))
        return [slow[i] if i in slow else (out_ids[bounds[i] - per_text[i]:bounds[i]],
                                           out_offsets[bounds[i] - per_text[i]:bounds[i]])
                for i in range(len(texts))]

    def _place(self, texts: list[str], runs: list[str], cuts: np.ndarray,
               items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids and character offsets of the placed texts back to back, and how many tokens each text got.

        A text's items (runs and template tokens, `items[t]` of them) cover it end to end, so its tokens' byte
        ends are the running sum of their byte lengths from the text's start; bytes are characters in ASCII texts,
        and mapped to characters in the others.
        """
        ids, lengths = self.fast.encode_texts_flat(runs)
        is_run = cuts < 0
        tokens_before = np.zeros(len(cuts), np.int64)  # run tokens before each item
        tokens_before[is_run] = lengths
        tokens_before = np.cumsum(tokens_before) - tokens_before
        out_ids = np.insert(ids, tokens_before[~is_run], cuts[~is_run]).astype(TOKEN_ID_DTYPE, copy=False)
        item_len = np.ones(len(cuts), np.int64)
        item_len[is_run] = lengths
        item_text = np.repeat(np.arange(len(texts)), items)
        per_text = np.bincount(item_text, weights=item_len, minlength=len(texts)).astype(np.int64)
        byte_lengths = self.byte_lengths[out_ids]
        # Starts and ends each in a row of their own (written and searched contiguously), handed out as (n, 2).
        offsets = np.empty((2, len(out_ids)), np.int64)
        ends = np.cumsum(byte_lengths, out=offsets[1])
        first = np.cumsum(per_text) - per_text  # each text's first token
        ends -= np.repeat(np.concatenate([[0], ends])[first], per_text)  # the bytes of the texts before
        np.subtract(ends, byte_lengths, out=offsets[0])
        for t in np.flatnonzero(items).tolist():
            if not texts[t].isascii():
                tokens = slice(int(first[t]), int(first[t] + per_text[t]))
                offsets[:, tokens] = _char_offsets(texts[t], offsets[1, tokens], byte_lengths[tokens]).T
        return out_ids, offsets.T, per_text

    def _layout(self, text: str, located: Spans) -> list[tuple[int, int, int]] | None:
        """The rendering as runs and the template's special tokens, or None where a special string crosses a content edge."""
        layout: list[tuple[int, int, int]] = []
        cursor = 0
        matches = self.cut_pattern.finditer(text) if self.cut_pattern is not None else ()
        located = sorted(located)
        content_ends = [ce for _, ce in located]  # non-decreasing: the spans are disjoint
        for match in matches:
            start, end = match.span()
            j = bisect.bisect_right(content_ends, start)  # the first content that ends after the match starts
            if j < len(located) and located[j][0] < end:  # overlaps that content: inside it, or across its edge
                if not (located[j][0] <= start and end <= located[j][1]):
                    return None
                continue
            if start > cursor:
                layout.append((cursor, start, -1))
            layout.append((start, end, self.cut_ids[match.group()]))
            cursor = end
        if len(text) > cursor:
            layout.append((cursor, len(text), -1))
        return layout

    def _exact(self, run: str) -> bool:
        """True when the fast path places this run's offsets exactly (its characters are what gets encoded)."""
        if run.isascii() or NFC_INERT.fullmatch(run):
            return True
        try:
            run.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replaced before encoding, so offsets would shift
            return False
        return self.fast.normalized(run) == run


def plain_text_backend(serialized: str) -> Any:
    """A Rust tokenizer that tokenizes special-token strings as ordinary text.

    A copy, because `encode_special_tokens` is a setting of the tokenizer object and the original must
    keep encoding the template's own special tokens as special.
    """
    plain = Tokenizer.from_str(serialized)
    plain.encode_special_tokens = True
    return plain


def _char_offsets(text: str, byte_ends: np.ndarray, byte_lengths: np.ndarray) -> np.ndarray:
    """Character offsets of tokens of `text` from their byte ends in it (a token inside a character covers it)."""
    data = np.frombuffer(text.encode("utf-8"), np.uint8)
    char_of_byte = np.cumsum((data & 0xC0) != 0x80) - 1  # continuation bytes belong to the char before
    return np.stack([char_of_byte[byte_ends - byte_lengths], char_of_byte[byte_ends - 1] + 1], axis=1)
