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
  is what HF does too: it extracts added tokens first and encodes the text between them. A run the normalizer
  changes (NFC composes "x\u0307") is normalized by HF's own normalizer, whose alignments map its tokens'
  offsets back. A rendering the fast path cannot place (text that is not valid UTF-8; a special-token string
  across a content's edge) goes the HF way: only then does a process build the Rust tokenizer.

Both give the same ids and offsets (tests on ShareGPT with qwen3; `chat_proof.fast_chat_difference` at load).
`rendering_encoder` chooses one for a tokenizer.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Protocol

import numpy as np
from tokenizers import PreTokenizedString, Regex, Tokenizer
from tokenizers.pre_tokenizers import Split

from packsft.config import Encoder
from packsft.render.encoder import NFC_INERT, FastEncoder
from packsft.render.tokenizer import TOKEN_ID_DTYPE, PackTokenizer

Spans = list[tuple[int, int]]
Encoded = tuple[np.ndarray, np.ndarray]  # ids (TOKEN_ID_DTYPE) and character offsets (n, 2)
RunLayout = list[tuple[int, int, int]]  # a rendering as (start, end, a template token's id, or -1 for a run)
# How FastRenderingEncoder places a run: by its tokens' byte lengths, or through HF's alignments where the normalizer
# changes it (FastRenderingEncoder._run_route).
PLACED, ALIGNED = "placed", "aligned"
# Splits a text into its characters, each with its offsets (nfc_alignment).
EACH_CHARACTER = Split(Regex(r"[\s\S]"), "isolated")


class RenderingEncoder(Protocol):
    """Encodes renderings of one tokenizer: the template's special tokens special, the record's own strings plain."""

    tokenizer: PackTokenizer
    special_ids: np.ndarray  # ids of the tokenizer's special tokens, sorted

    def encode(self, texts: list[str], spans: list[Spans]) -> list[Encoded]:
        """Ids and offsets of each rendering; `spans` are the character spans of its message contents."""
        ...

    def count(self, texts: list[str]) -> int:
        """How many tokens the Rust tokenizer's `encode_batch` gives these texts (special-token strings one each)."""
        ...


def special_ids(tokenizer: PackTokenizer) -> np.ndarray:
    """Ids of the tokenizer's special tokens, sorted: its special added tokens and the strings transformers lists as
    special (`PackTokenizer.special_tokens`), those that are tokens."""
    strings = set(tokenizer.added_tokens.special) | set(tokenizer.special_tokens)
    return np.array(sorted({i for s in strings if (i := tokenizer.token_to_id(s)) is not None}), np.int64)


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
        self.special_ids = special_ids(tokenizer)
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

    def count(self, texts: list[str]) -> int:
        """How many tokens the Rust tokenizer's `encode_batch` gives these texts (special-token strings one each)."""
        self.backend.encode_special_tokens = False
        return sum(len(ids) for ids in self.tokenizer.encode_batch(texts)) if texts else 0

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
        self.special_ids = special_ids(tokenizer)
        self._hf: HfRenderingEncoder | None = None
        self.cut_ids = fast.special_tokens
        names = sorted(fast.special_tokens, key=len, reverse=True)  # leftmost-longest, as HF matches
        self.cut_pattern = re.compile("|".join(map(re.escape, names))) if names else None
        added = tokenizer.added_tokens
        content = sorted(set(added.ids) - set(added.special), key=len, reverse=True)
        self.content_pattern = re.compile("|".join(map(re.escape, content))) if content else None
        # A run the normalizer changes is placed through HF's alignments (`_aligned`) where HF matches every added
        # token before it normalizes; one matched in normalized text ("normalized": true) sends it the HF way.
        self.aligns = not added.normalized
        self.byte_lengths = fast.byte_lengths().astype(np.int32)  # a token's bytes: gathered per token, kept small

    @property
    def hf(self) -> HfRenderingEncoder:
        """The HF way, for the renderings the fast path cannot place (a special-token string across a content's edge,
        lone surrogates): built at the first of them, so that a worker that meets none never builds the Rust
        tokenizer (~50 MiB and ~0.4 s for qwen3)."""
        if self._hf is None:
            self._hf = HfRenderingEncoder(self.tokenizer)
        return self._hf

    def encode(self, texts: list[str], spans: list[Spans]) -> list[Encoded]:
        """Ids and offsets of each rendering; `spans` are the character spans of its message contents.

        All runs of the batch are encoded in one call and placed with array operations (`_place`); a rendering
        with a run the normalizer changes is placed on its own (`_aligned`); renderings the fast path cannot place
        go the HF way.
        """
        runs: list[str] = []
        cuts: list[int] = []  # per item of the placed texts, back to back: a template token's id, or -1 for a run
        items = np.zeros(len(texts), np.int64)  # items per text
        fallback: list[int] = []
        alone: dict[int, Encoded] = {}
        for index, (text, located) in enumerate(zip(texts, spans)):
            layout, encoded = self._routed(text, located)
            if encoded is not None:
                alone[index] = encoded
            elif layout is None:
                fallback.append(index)
            else:
                runs.extend(text[lo:hi] for lo, hi, cut in layout if cut < 0)
                cuts.extend(cut for _, _, cut in layout)
                items[index] = len(layout)
        out_ids, out_offsets, per_text = self._place(texts, runs, np.asarray(cuts, np.int64), items)
        bounds = np.cumsum(per_text)
        if fallback:  # the HF way is built only for them
            alone.update(zip(fallback, self.hf.encode([texts[i] for i in fallback], [spans[i] for i in fallback])))
        return [alone[i] if i in alone else (out_ids[bounds[i] - per_text[i]:bounds[i]],
                                             out_offsets[bounds[i] - per_text[i]:bounds[i]])
                for i in range(len(texts))]

    def count(self, texts: list[str]) -> int:
        """How many tokens the Rust tokenizer's `encode_batch` gives these texts (special-token strings one each):
        the runs between special tokens by the fast encoder, as `encode` encodes a rendering without contents."""
        runs: list[str] = []
        counted, slow = 0, []
        for text in texts:
            layout, encoded = self._routed(text, [])
            if encoded is not None:
                counted += len(encoded[0])
            elif layout is None:
                slow.append(text)
            else:
                runs.extend(text[lo:hi] for lo, hi, cut in layout if cut < 0)
                counted += sum(cut >= 0 for _, _, cut in layout)
        return counted + len(self.fast.encode_texts_flat(runs)[0]) + (self.hf.count(slow) if slow else 0)

    def _routed(self, text: str, located: Spans) -> tuple[RunLayout | None, Encoded | None]:
        """How to encode a rendering: (its runs and template tokens, None) to place them with the batch's (`_place`);
        (None, its ids and offsets) where the normalizer changes a run (`_aligned`); (None, None) the HF way."""
        layout = self._layout(text, located)
        if layout is None:
            return None, None
        routes = {PLACED} if text.isascii() else {self._run_route(text[lo:hi]) for lo, hi, cut in layout if cut < 0}
        if None in routes:
            return None, None
        return (None, self._aligned(text, layout)) if ALIGNED in routes else (layout, None)

    def _run_route(self, run: str) -> str | None:
        """PLACED where the run's tokens' byte lengths place it, ALIGNED where the normalizer changes it, None where
        the fast path cannot encode it."""
        if run.isascii() or NFC_INERT.fullmatch(run):
            return PLACED
        try:
            run.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replaced before encoding, so offsets would shift
            return None
        if self.fast.normalized(run) == run:
            return PLACED
        return ALIGNED if self.aligns else None

    def _aligned(self, text: str, layout: RunLayout) -> Encoded | None:
        """Ids and offsets of a rendering with a run the normalizer changes, as HF gives them: HF cuts the run at its
        added tokens and normalizes each piece between them, aligning each normalized character with original ones
        (`nfc_alignment`); the fast encoder encodes the normalized piece (HF's ids: the piece normalizes to it, and
        the fast encoder is proven on content), and a token's offsets run from its first character's aligned start
        to its last one's aligned end, as HF maps offsets back. None where a normalized piece holds an added token's
        string (HF matched added tokens before normalizing; the fast encoder would match it)."""
        parts: list[Encoded] = []
        for lo, hi, cut in layout:
            run = text[lo:hi]
            if cut >= 0:
                parts.append((np.array([cut], TOKEN_ID_DTYPE), np.array([[lo, hi]], np.int64)))
            elif self._run_route(run) == PLACED:
                parts.append(self._placed_run(run, lo))
            else:
                for start, end, token in self._added_pieces(run):
                    if token is not None:
                        parts.append((np.array([token], TOKEN_ID_DTYPE), np.array([[lo + start, lo + end]], np.int64)))
                        continue
                    normalized, origin = nfc_alignment(run[start:end])
                    if self.content_pattern is not None and self.content_pattern.search(normalized):
                        return None
                    ids, offsets = self._placed_run(normalized, 0)
                    parts.append((ids, np.stack([origin[offsets[:, 0], 0], origin[offsets[:, 1] - 1, 1]], 1)
                                  + lo + start))
        if not parts:
            return np.zeros(0, TOKEN_ID_DTYPE), np.zeros((0, 2), np.int64)
        return np.concatenate([ids for ids, _ in parts]), np.concatenate([offsets for _, offsets in parts])

    def _added_pieces(self, run: str) -> list[tuple[int, int, int | None]]:
        """The run as the text between its added tokens (None) and those tokens (their ids), as HF cuts it."""
        pieces: list[tuple[int, int, int | None]] = []
        cursor = 0
        for match in self.content_pattern.finditer(run) if self.content_pattern is not None else ():
            if match.start() > cursor:
                pieces.append((cursor, match.start(), None))
            pieces.append((match.start(), match.end(), self.tokenizer.added_tokens.ids[match.group()]))
            cursor = match.end()
        if len(run) > cursor:
            pieces.append((cursor, len(run), None))
        return pieces

    def _placed_run(self, run: str, at: int) -> Encoded:
        """Ids and character offsets (from `at`) of one run placed by its tokens' byte lengths (`_place`)."""
        ids, offsets, _ = self._place([run], [run], np.array([-1], np.int64), np.array([1], np.int64))
        return ids, offsets + at

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

    def _layout(self, text: str, located: Spans) -> RunLayout | None:
        """The rendering as runs and the template's special tokens, or None where a special string crosses a content edge."""
        layout: RunLayout = []
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


def plain_text_backend(serialized: str) -> Any:
    """A Rust tokenizer that tokenizes special-token strings as ordinary text.

    A copy, because `encode_special_tokens` is a setting of the tokenizer object and the original must
    keep encoding the template's own special tokens as special.
    """
    plain = Tokenizer.from_str(serialized)
    plain.encode_special_tokens = True
    return plain


def nfc_alignment(text: str) -> tuple[str, np.ndarray]:
    """HF's NFC of a text and, per character of it, the span of `text` HF's NormalizedString aligns it with, in
    characters: what HF maps offsets back through. HF aligns by position in its change stream, not by character:
    "x\u0307" -> "\u1e8b" aligns the composed character with the x alone, and "a\u0301\u0323" -> "\u1ea1\u0301"
    the acute with where the dot below was."""
    pretokenized = PreTokenizedString(text)
    pretokenized.normalize(lambda normalized: normalized.nfc())
    EACH_CHARACTER.pre_tokenize(pretokenized)  # in Rust: 1.2 us a character, where slicing in Python took 25
    splits = pretokenized.get_splits(offset_referential="original", offset_type="char")
    return "".join(char for char, _, _ in splits), np.array([span for _, span, _ in splits], np.int64).reshape(-1, 2)


def _char_offsets(text: str, byte_ends: np.ndarray, byte_lengths: np.ndarray) -> np.ndarray:
    """Character offsets of tokens of `text` from their byte ends in it (a token inside a character covers it)."""
    data = np.frombuffer(text.encode("utf-8"), np.uint8)
    char_of_byte = np.cumsum((data & 0xC0) != 0x80) - 1  # continuation bytes belong to the char before
    return np.stack([char_of_byte[byte_ends - byte_lengths], char_of_byte[byte_ends - 1] + 1], axis=1)
