"""Fast content encoders, used only where one is proven to give the HF tokenizer's ids.

    tokenizer.json (as HF loaded it) --backend--> a FastEncoder --probe set vs HF, id for id--> in use

Two backends, fastest first (`BACKENDS`); `--encoder auto` takes the first one proven for the tokenizer:

- `gigatoken` (GigatokenEncoder): byte-level BPE (GPT-2, Llama 3, Qwen 2/3, ...) and SentencePiece-style BPE with
  byte fallback (Llama 2, Mistral v1-v3, Gemma), with pre-tokenizers it recognizes; 5-8x tiktoken's rate on
  ShareGPT contents (BENCHMARKS.md). It reads every added token it knows as a control token, so it is
  built from the tokenizer without its special added tokens: a special-token string in content is then
  plain text, as HF's `encode_special_tokens=True` encodes it, with no scan of the content at all.
- `tiktoken` (TiktokenEncoder): a byte-level BPE behind any one regex, for the tokenizers gigatoken refuses (a
  regex it has no pretokenizer for). `read_bpe_spec` refuses a tokenizer whose normalizer, pre-tokenizer,
  model options or added tokens it does not reproduce.

Equality is never assumed: each backend is compared with HF's ids on a built-in probe set (unicode classes,
whitespace runs, numbers, contractions, emoji, CJK, combining marks, code, special-token strings, every code
point of planes 0 and 1); a single difference refuses it. `verify --deep` re-encodes with HF anyway.

Why rank order is enough for tiktoken: it merges, at each step, the adjacent pair whose concatenation has the
lowest rank; HF merges the pair listed first in `merges`. With ranks = token ids these agree when the
ids of merge results increase in merge order (checked), as for every tokenizer trained this way.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tokenizers.normalizers import NFC

from packsft.render.flat_ids import flat_ids

# GPT-2's pre-tokenizer regex, which the HF ByteLevel pre-tokenizer applies when `use_regex` is on.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Texts per thread task: large enough that handing work to a thread costs little.
THREAD_CHUNK = 256
# Ids the fast encoder returns as int32 arrays (`encode_texts_flat`) must stay below this.
MAX_TOKEN_ID = 1 << 31
# Code points per probe text of the unicode sweep.
PROBE_RUN = 512

# gigatoken caches every pre-token it has encoded, per tokenizer object, and never evicts (about 50 bytes a
# distinct pre-token: 30 MiB per 7 M characters of never-seen words). The encoder is rebuilt from its JSON
# after this many characters (about 4 ShareGPT units; a rebuild takes 0.16 s for GPT-2), which frees them:
# RSS stays flat over a long run at a cost of under 1% of a pack's time (BENCHMARKS.md).
GIGATOKEN_REBUILD_CHARS = 64 << 20

Backend = Literal["gigatoken", "tiktoken"]
# Fastest first: `--encoder auto` and `fast` take the first one proven for the tokenizer.
BACKENDS: tuple[Backend, ...] = ("gigatoken", "tiktoken")

# Text of these characters is NFC whatever the Unicode version (each has NFC_Quick_Check=Yes and combining class 0
# in every version, none composes with what follows): Latin up to the combining marks, Cyrillic without its
# combining marks, general punctuation from U+2010 (U+2000 and U+2001 are singletons), CJK symbols and
# punctuation without their tone marks, kana without the voicing marks, CJK unified ideographs, Hangul syllables,
# fullwidth ASCII, emoji. A run of them needs no normalizing to know its offsets are exact.
NFC_INERT = re.compile("[\x00-\u02ff\u0400-\u0482\u048a-\u04ff\u2010-\u205e\u3000-\u3029\u3030-\u303f"
                       "\u3041-\u3096\u30a1-\u30fa\u4e00-\u9fff\uac00-\ud7a3\uff01-\uff5e\U0001f300-\U0001faff]*")


class FastEncoderRefused(Exception):
    """The tokenizer is not one the fast encoder reproduces exactly (the message says why)."""


@dataclass(frozen=True)
class BpeSpec:
    """What a byte-level BPE tokenizer does to a text, read from its serialized form."""

    ranks: dict[bytes, int]
    pattern: str
    nfc: bool
    content_tokens: dict[str, int]  # non-special added tokens: matched in content too
    special_tokens: dict[str, int]  # special added tokens: control tokens, never from content


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 bytes (how byte-level vocabularies spell bytes), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def read_bpe_spec(serialized: str, check_order: bool = True) -> BpeSpec:
    """The spec of a serialized HF tokenizer (`backend_tokenizer.to_str()`), or FastEncoderRefused.

    `check_order=False` skips the merge-order check, for a tokenizer whose encoder is already proven.
    """
    return bpe_spec(json.loads(serialized), check_order)


def bpe_spec(spec: dict[str, Any], check_order: bool = True) -> BpeSpec:
    """`read_bpe_spec` of the tokenizer JSON already parsed."""
    nfc = _normalizer(spec.get("normalizer"))
    pattern = _pattern(spec.get("pre_tokenizer"))
    model = spec.get("model") or {}
    _check_model(model)
    # str.translate maps the stand-ins to code points 0..255, which latin-1 writes as those bytes.
    table = str.maketrans(byte_decoder())
    try:
        ranks = {token.translate(table).encode("latin-1"): rank for token, rank in model["vocab"].items()}
    except UnicodeEncodeError:
        raise FastEncoderRefused("the vocabulary has tokens that are not byte-level (not a byte-level BPE)") from None
    if check_order:
        _check_merge_order(model)
    if max([*ranks.values(), *(a["id"] for a in spec.get("added_tokens") or [])], default=0) >= MAX_TOKEN_ID:
        raise FastEncoderRefused("token ids do not fit 31 bits")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise FastEncoderRefused("the vocabulary lacks some of the 256 byte tokens")
    content: dict[str, int] = {}
    special: dict[str, int] = {}
    for added in spec.get("added_tokens") or []:
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            raise FastEncoderRefused(f"added token {added['content']!r} strips spaces or matches single words only")
        if nfc and unicodedata.normalize("NFC", added["content"]) != added["content"]:
            raise FastEncoderRefused(f"added token {added['content']!r} changes under the normalizer")
        (special if added.get("special") else content)[added["content"]] = added["id"]
    names = sorted({**content, **special})
    # HF finds added tokens leftmost-longest, tiktoken leftmost-first: equal unless one is a prefix of another.
    if any(b.startswith(a) for a, b in zip(names, names[1:])):
        raise FastEncoderRefused("an added token is a prefix of another")
    return BpeSpec(ranks, pattern, nfc, content, special)


def _normalizer(normalizer: dict[str, Any] | None) -> bool:
    """True for NFC (reproduced with unicodedata), False for none; anything else is refused."""
    if normalizer is None or (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        return False
    if normalizer.get("type") == "NFC":
        return True
    raise FastEncoderRefused(f"normalizer {normalizer.get('type')!r} is not reproduced")


def _pattern(pre: dict[str, Any] | None) -> str:
    """The one regex of a byte-level pre-tokenizer, as tiktoken takes it."""
    steps: list[Any] = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    if not steps or not steps[-1] or steps[-1].get("type") != "ByteLevel":
        raise FastEncoderRefused("the pre-tokenizer does not end in ByteLevel (not a byte-level BPE)")
    if steps[-1].get("add_prefix_space"):
        raise FastEncoderRefused("the ByteLevel pre-tokenizer adds a prefix space")
    if len(steps) == 1 and steps[0].get("use_regex", True):
        return GPT2_PATTERN
    split = steps[0]
    if (
        len(steps) == 2
        and not steps[1].get("use_regex", True)
        and split.get("type") == "Split"
        and "Regex" in (split.get("pattern") or {})
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
    ):
        return split["pattern"]["Regex"]
    kinds = ", ".join(str(step.get("type")) for step in steps if step)
    raise FastEncoderRefused(f"pre-tokenizer ({kinds}) is not one regex split + ByteLevel")


def _check_model(model: dict[str, Any]) -> None:
    if model.get("type") != "BPE":
        raise FastEncoderRefused(f"model {model.get('type')!r} is not BPE")
    if model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get(
        "end_of_word_suffix"
    ):
        raise FastEncoderRefused("BPE options (dropout, byte fallback, subword prefix/suffix) are not reproduced")


def merge_pair(merge: str | list[str]) -> tuple[str, str]:
    """The two tokens of a BPE merge as tokenizer.json spells it: "left right", or ["left", "right"]."""
    if isinstance(merge, str):
        left, _, right = merge.partition(" ")
        return left, right
    return merge[0], merge[1]


def _check_merge_order(model: dict[str, Any]) -> None:
    """Ranks are token ids; that equals HF's merge order only if merge results are numbered in it."""
    vocab, previous = model["vocab"], -1
    for merge in model["merges"]:
        rank = vocab.get("".join(merge_pair(merge)))
        if rank is None or rank <= previous:
            raise FastEncoderRefused("token ids do not follow the merge order")
        previous = rank


class FastEncoder(Protocol):
    """What a fast backend offers: content encoding (special-token strings plain text, non-special added tokens
    matched) and what the chat path needs to place tokens in a rendering (render/chat/encode.py)."""

    backend: Backend
    # Where token byte lengths are its characters' UTF-8 bytes (a byte-level BPE; not SentencePiece's
    # U+2581 and prepended space) and the normalizer is none or NFC: the chat path may place runs by them.
    byte_level: bool
    special_tokens: dict[str, int]  # special added tokens: the control tokens a chat template renders

    def normalized(self, text: str) -> str: ...

    def encode_texts(self, texts: list[str]) -> list[list[int]]: ...

    def encode_texts_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def byte_lengths(self) -> np.ndarray: ...

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token id stands for (b"" for an id it has no token for)."""
        ...


class TiktokenEncoder:
    """Encodes texts with tiktoken, as the HF tokenizer it was proven against does.

    One per process: it holds the Rust rank table and a small thread pool (`threads` > 1).
    """

    backend: Backend = "tiktoken"
    byte_level = True

    def __init__(self, spec: BpeSpec, threads: int = 1) -> None:
        import tiktoken

        self.spec = spec
        self.special_tokens = spec.special_tokens
        self._core = tiktoken.Encoding(
            "packsft-fast", pat_str=spec.pattern, mergeable_ranks=spec.ranks,
            special_tokens={**spec.content_tokens, **spec.special_tokens},
        )
        self._content = frozenset(spec.content_tokens)
        self._nfc = NFC() if spec.nfc else None
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def normalized(self, text: str) -> str:
        """The text as this encoder encodes it: NFC-normalized (by HF's own NFC) where the tokenizer normalizes."""
        return text if self._nfc is None or text.isascii() else self._nfc.normalize_str(text)

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text as ordinary text (special-token strings in it are plain text)."""
        if self._content:
            core, allowed = self._core, self._content

            def encode(text: str) -> list[int]:
                return core.encode(text, allowed_special=allowed, disallowed_special=())
        else:
            encode = self._core.encode_ordinary
        return self._map(encode, texts)

    def encode_texts_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_texts` as one flat array of ids (int32) and each text's length: no Python int per token."""
        core, allowed = self._core, self._content

        def encode(text: str) -> np.ndarray:
            try:
                return core.encode_to_numpy(text, allowed_special=allowed, disallowed_special=())
            except UnicodeEncodeError:  # lone surrogates: replaced as tiktoken's `encode` replaces them
                text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                return core.encode_to_numpy(text, allowed_special=allowed, disallowed_special=())

        arrays = self._map(encode, texts)
        lengths = np.fromiter(map(len, arrays), np.int64, len(arrays))
        # Ids are below 2**31 (checked when the rank table was read): the uint32 buffer is reinterpreted, not copied.
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.uint32)
        return ids.view(np.int32), lengths

    def byte_lengths(self) -> np.ndarray:
        """Per token id, the number of UTF-8 bytes it stands for."""
        return _byte_lengths(_per_id({token: len(text) for text, token in self.spec.ranks.items()}),
                             {**self.spec.content_tokens, **self.spec.special_tokens})

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token id stands for (b"" for an id it has no token for)."""
        try:
            return self._core.decode_single_token_bytes(token_id)
        except KeyError:
            return b""

    def _map(self, encode: Callable[[str], Any], texts: list[str]) -> list[Any]:
        if self._nfc is not None:
            # HF's own NFC (Python's unicodedata follows another Unicode version: U+0898 differs);
            # ASCII text is always NFC already, and most content is ASCII.
            normalize = self._nfc.normalize_str
            texts = [text if text.isascii() else normalize(text) for text in texts]
        if self._pool is None or len(texts) < 2 * THREAD_CHUNK:
            return [encode(text) for text in texts]
        chunks = [texts[i:i + THREAD_CHUNK] for i in range(0, len(texts), THREAD_CHUNK)]
        return [ids for chunk in self._pool.map(lambda part: [encode(t) for t in part], chunks) for ids in chunk]


@dataclass(frozen=True)
class GigatokenSource:
    """What a GigatokenEncoder is built from, derived from the serialized tokenizer: the tokenizer.json gigatoken
    reads (special added tokens made plain, NFC left to HF's normalizer) and the facts the encoder keeps. Deriving
    it parses and writes the whole JSON (qwen3: 0.25 s); `entry` / `from_entry` keep it in the tokenizer cache,
    so that a worker builds gigatoken without that (PackTokenizer.fast). Where the cache also keeps a rank file
    proven to build the same tokenizer (rank_file.py), gigatoken is built from it: `ranks`, with gigatoken's name
    for its pretokenizer `scheme` and its added tokens `rank_added`.

    `plain` is the tokenizer.json, or a function reading it from the cache on first need (`plain_json`): a worker
    that builds from the rank file never reads it (qwen3: 6.3 MB, 0.06 s a worker)."""

    special_tokens: dict[str, int]
    nfc: bool
    byte_level: bool
    ranks: Path | None = None
    scheme: str | None = None
    rank_added: dict[str, int] | None = None
    plain: bytes | Callable[[], bytes] = field(default=b"", repr=False, compare=False)

    @cached_property
    def plain_json(self) -> bytes:
        """The tokenizer.json gigatoken reads (compact UTF-8)."""
        return self.plain if isinstance(self.plain, bytes) else self.plain()

    @staticmethod
    def of(serialized: str) -> GigatokenSource:
        spec = json.loads(serialized)
        added = spec.get("added_tokens") or []
        normalizer = spec.get("normalizer")
        nfc = normalizer is not None and normalizer.get("type") == "NFC"
        model = spec.get("model") or {}
        byte_level = (normalizer is None or nfc) and not model.get("byte_fallback") and "ByteLevel" in json.dumps(
            spec.get("pre_tokenizer"))
        plain = {**spec, "added_tokens": [a for a in added if not a.get("special")],
                 "normalizer": None if nfc else normalizer}
        # Compact UTF-8 bytes (qwen3: 5.4 MB, where json.dumps' escaped str held 9.1 M characters).
        return GigatokenSource(plain=json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode(),
                               special_tokens={a["content"]: a["id"] for a in added if a.get("special")},
                               nfc=nfc, byte_level=bool(byte_level))

    def entry(self) -> dict[str, Any]:
        """The facts a cache entry keeps (the tokenizer.json is kept in a file of its own)."""
        return {"special_tokens": self.special_tokens, "nfc": self.nfc, "byte_level": self.byte_level}

    @staticmethod
    def from_entry(entry: dict[str, Any], plain: bytes | Callable[[], bytes]) -> GigatokenSource:
        return GigatokenSource(plain=plain, special_tokens=dict(entry["special_tokens"]), nfc=bool(entry["nfc"]),
                               byte_level=bool(entry["byte_level"]))


# Rank tokenizers built before this process was forked (`prebuild_ranks`: the fork server, run/prebuild.py), by what
# each was built from. A worker's first build of the same takes it in place of building (qwen3: 0.25 s a worker, both
# workers at once as a pack starts); a rebuild (GIGATOKEN_REBUILD_CHARS) builds a fresh one.
_PREBUILT: dict[tuple[Any, ...], Any] = {}


def prebuild_ranks(path: Path, scheme: str, added: dict[str, int]) -> None:
    """Build gigatoken's tokenizer from a rank file now, for the next `rank_tokenizer` of the same file (unchanged:
    the same inode, size and time) with the same scheme and added tokens, in this process or one forked from it.
    Building starts no threads (gigatoken's pool starts at a parallel encode), so this process may fork after."""
    key = _rank_key(path, scheme, added)
    if key is not None:
        _PREBUILT[key] = _build_ranks(path, scheme, added)


def rank_tokenizer(path: Path, scheme: str, added: dict[str, int]) -> Any:
    """gigatoken's tokenizer from a rank file (the one `prebuild_ranks` built, where it did), or FastEncoderRefused
    (gigatoken raises, or panics: a BaseException)."""
    key = _rank_key(path, scheme, added) if _PREBUILT else None
    prebuilt = _PREBUILT.pop(key, None) if key is not None else None
    return prebuilt if prebuilt is not None else _build_ranks(path, scheme, added)


def _rank_key(path: Path, scheme: str, added: dict[str, int]) -> tuple[Any, ...] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, scheme,
            tuple(sorted(added.items())))


def _build_ranks(path: Path, scheme: str, added: dict[str, int]) -> Any:
    import gigatoken

    try:
        return gigatoken.Tokenizer.from_tiktoken(str(path), pretokenizer=scheme, special_tokens=added)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException is a BaseException
        raise FastEncoderRefused(f"gigatoken's rank loader does not read it: {str(exc).splitlines()[0]}") from None


class GigatokenEncoder:
    """Encodes texts with gigatoken, as the HF tokenizer it was proven against does.

    Built from the tokenizer without its special added tokens (see the module docstring): content never
    yields a control token, and the template's own control tokens are placed by the chat path, not encoded.
    An NFC normalizer is applied here, by HF's own NFC, and not by gigatoken's, which follows another Unicode
    version (U+0898 differs: the probes refuse it). `threads` > 1 encodes a batch on gigatoken's
    process-wide thread pool, 1 on the calling thread.
    """

    backend: Backend = "gigatoken"

    def __init__(self, serialized: str | GigatokenSource, threads: int = 1) -> None:
        try:
            import gigatoken
        except ImportError:
            raise FastEncoderRefused("gigatoken is not installed (pip install gigatoken)") from None
        source = serialized if isinstance(serialized, GigatokenSource) else GigatokenSource.of(serialized)
        self.special_tokens = dict(source.special_tokens)
        self.byte_level = source.byte_level
        # Kept for rebuilds (GIGATOKEN_REBUILD_CHARS); gigatoken keeps this object.
        self._source = source
        self.built_from = "json"  # or "ranks" (GigatokenSource.ranks)
        try:
            self._tokenizer = self._build(gigatoken)
        except Exception as exc:  # gigatoken raises RuntimeError/ValueError for what it does not read
            raise FastEncoderRefused(f"gigatoken does not read it: {str(exc).strip().splitlines()[0]}") from None
        self._chars = 0  # characters encoded since the tokenizer was built (GIGATOKEN_REBUILD_CHARS)
        self._nfc = NFC() if source.nfc else None
        self._parallel = threads > 1

    def _build(self, gigatoken: Any) -> Any:
        """gigatoken's tokenizer: from the source's rank file where it has one that loads, else from its JSON."""
        source = self._source
        if source.ranks is not None and source.scheme is not None:
            try:
                built = rank_tokenizer(source.ranks, source.scheme, source.rank_added or {})
            except FastEncoderRefused:
                pass
            else:
                self.built_from = "ranks"
                return built
        self.built_from = "json"
        return gigatoken.Tokenizer.from_json(source.plain_json)

    @property
    def plain_json(self) -> bytes:
        """The tokenizer.json gigatoken is built from (special added tokens made plain), UTF-8: what scripts/bench.py
        gives gigatoken alone."""
        return self._source.plain_json

    def normalized(self, text: str) -> str:
        """The text as the chat path must see it to place tokens: NFC-normalized where the tokenizer normalizes so."""
        return text if self._nfc is None or text.isascii() else self._nfc.normalize_str(text)

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text as ordinary text (special-token strings in it are plain text)."""
        texts = self._normalized_all(texts)
        try:
            return self._tokenizer.encode_batch_list(texts, parallel=self._parallel)
        except TypeError:  # lone surrogates: replaced as tiktoken's `encode` replaces them
            return self._tokenizer.encode_batch_list(_without_surrogates(texts), parallel=self._parallel)

    def encode_texts_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_texts` as one flat array of ids (int32) and each text's length, straight from gigatoken's buffers."""
        if not texts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        texts = self._normalized_all(texts)
        try:
            result = self._tokenizer.encode_batch(texts, parallel=self._parallel)
        except TypeError:
            result = self._tokenizer.encode_batch(_without_surrogates(texts), parallel=self._parallel)
        ids, counts = flat_ids(result)
        # Ids are below 2**31 (a vocabulary that size is refused by TOKEN_ID_DTYPE's users): a view, not a copy.
        return ids.view(np.int32), counts

    def _normalized_all(self, texts: list[str]) -> list[str]:
        """The texts as gigatoken must see them (NFC where the tokenizer normalizes so); also where its caches are
        bounded, since every text passes here before it is encoded."""
        self._chars += sum(map(len, texts))
        if self._chars > GIGATOKEN_REBUILD_CHARS:
            import gigatoken

            # The old tokenizer goes first: built beside it, the new one held both at once and the heap fragmented,
            # so that RSS climbed ~25 MiB a rebuild (qwen3 over 350 M characters: +154 MiB; now flat at +86-101).
            del self._tokenizer
            self._tokenizer, self._chars = self._build(gigatoken), 0
        if self._nfc is None:
            return texts
        # ASCII text is NFC already, and most content is ASCII; most of the rest is made of characters NFC never changes.
        normalize = self._nfc.normalize_str
        return [text if text.isascii() or NFC_INERT.fullmatch(text) else normalize(text) for text in texts]

    def byte_lengths(self) -> np.ndarray:
        """Per token id, the number of UTF-8 bytes it stands for (meaningful where `byte_level`): read from the rank
        file where gigatoken was built from one (qwen3: 3 ms, where its `vocab` takes 40 ms)."""
        source = self._source
        if self.built_from == "ranks" and source.ranks is not None:
            return _byte_lengths(rank_byte_lengths(source.ranks.read_bytes()),
                                 {**(source.rank_added or {}), **self.special_tokens})
        vocab = self._tokenizer.vocab
        return _byte_lengths(_per_id({token: len(text) for token, text in vocab.items()}), self.special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token id stands for (b"" for an id it has no token for, a special one included: gigatoken is
        built without them)."""
        # gigatoken panics (a BaseException) on an id past its vocabulary.
        return self._tokenizer.decode([token_id]) if 0 <= token_id < self._tokenizer.vocab_size else b""


def _without_surrogates(texts: list[str]) -> list[str]:
    """The texts with lone surrogates replaced by U+FFFD (what tiktoken does; HF refuses such text)."""
    return [text.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for text in texts]


def rank_byte_lengths(ranks: bytes) -> np.ndarray:
    """Per rank, the bytes of its token, from a rank file's lines (base64 token, space, rank; in rank order from 0,
    as rank_file.py writes them): a token's base64 length and padding give its length."""
    data = np.frombuffer(ranks, np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    spaces = np.flatnonzero(data == ord(" "))  # one a line: base64 holds none
    if len(spaces) != len(ends) or not len(ends):
        raise ValueError("not a rank file of one token a line")
    starts = np.concatenate([[0], ends[:-1] + 1])
    padding = (data[spaces - 1] == ord("=")).astype(np.int64) + (data[spaces - 2] == ord("="))
    return (spaces - starts) // 4 * 3 - padding


def _per_id(values: dict[int, int]) -> np.ndarray:
    """The values as an array indexed by id (0 for an id without one)."""
    table = np.zeros(max(values, default=-1) + 1, np.int64)
    table[np.fromiter(values, np.int64, len(values))] = np.fromiter(values.values(), np.int64, len(values))
    return table


def _byte_lengths(lengths: np.ndarray, added: dict[str, int]) -> np.ndarray:
    """Per token id, the number of UTF-8 bytes it stands for: the vocabulary's (`lengths` per id) and the added
    tokens'."""
    table = np.zeros(max([len(lengths) - 1, *added.values()]) + 1, np.int64)
    table[:len(lengths)] = lengths
    for content, token in added.items():
        table[token] = len(content.encode("utf-8"))
    return table


def probe_texts() -> list[str]:
    """Texts where a byte-level BPE reimplementation would differ first, if it differed at all."""
    probes = [
        "Hello world", " leading space", "trailing space ", "  two  spaces  ", "\t\ttabs\tand\n\nnewlines\r\n",
        "x\n \n  \n", "   \n\n   end", "a\u00a0b\u2003c\u3000d", "\u200b\u200d\ufeff",
        "I'm you're he's we've they'll I'd can't DON'T It'S", "'s 're 'Ve",
        "0 12 345 6789 1234567890 3.14159 -42 1e10 ١٢٣ ۴۵۶ ४५६ ⅠⅡⅢ ½ ²³",
        "emoji 😀😃🙂 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✓✗",
        "中文字符，标点。日本語のテキスト、カタカナ。한국어 텍스트입니다.",
        "combining: e\u0301 a\u0308 n\u0303 \u1100\u1161\u11a8 Å Å ﬁ ｆｕｌｌ",
        "Ελληνικά Русский текст עברית العربية हिन्दी ไทย ქართული",
        "def f(x):\n    return {'a': [1, 2]}  # comment\n\tif x != y: pass\n",
        "<html><body class=\"x\">&amp;</body></html> SELECT * FROM t WHERE id=1;",
        "!!! ??? ... --- *** ``` ~~~ @@ ## $$ %% ^^ && (( )) [[ ]] {{ }} || \\\\ // ;; ::",
        "<|endoftext|> <|im_start|>user\n<|im_end|> <think></think> <s>[INST] </s> <|user|>",
        "",
    ]
    # Every code point of planes 0 and 1 after a letter and before a digit, so that the regex's unicode
    # classes (letter, number, whitespace) are compared on all of them, not on a sample; and the BMP's
    # code points in a row, so that the normalizer composes and reorders neighbouring marks (U+0898
    # U+0899 is where Python's unicodedata and HF's NFC disagree). Unicode versions differ exactly there.
    chars = [chr(c) for c in range(0x20, 0x20000) if not 0xD800 <= c < 0xE000]
    probes += [" x" + "1 x".join(chars[i:i + PROBE_RUN]) for i in range(0, len(chars), PROBE_RUN)]
    bmp = chars[: chars.index(chr(0x10000))]
    probes += ["".join(bmp[i:i + PROBE_RUN]) for i in range(0, len(bmp), PROBE_RUN)]
    return probes


def first_difference(fast: FastEncoder, hf_encode: Callable[[list[str]], list[list[int]]]) -> str | None:
    """None when the fast encoder gives HF's ids on every probe; else a description of the first miss."""
    probes = probe_texts()
    for text, mine, theirs in zip(probes, fast.encode_texts(probes), hf_encode(probes)):
        if mine != theirs:
            at = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            return f"probe {text[:40]!r}: token {at} is {mine[at:at + 3]} (fast) vs {theirs[at:at + 3]} (HF)"
    return None


def fast_encoder(backend: Backend, serialized: str, threads: int = 1, *, check_order: bool = True,
                 source: GigatokenSource | None = None) -> FastEncoder:
    """The `backend` encoder of this tokenizer (unproven), or FastEncoderRefused where the backend cannot read it.

    `check_order=False` skips tiktoken's merge-order check, for a tokenizer whose encoder is already proven;
    `source` is gigatoken's, where the caller has it (from the tokenizer cache).
    """
    if backend == "gigatoken":
        return GigatokenEncoder(source or serialized, threads)
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        raise FastEncoderRefused("tiktoken is not installed (pip install tiktoken)") from None
    return TiktokenEncoder(read_bpe_spec(serialized, check_order), threads)


def build_fast_encoder(
    backend: Backend, serialized: str, hf_encode: Callable[[list[str]], list[list[int]]] | None, threads: int = 1
) -> FastEncoder:
    """The `backend` encoder for this tokenizer, proven equal to `hf_encode` on the probe set, or FastEncoderRefused.

    Args:
        serialized: the HF tokenizer as loaded (`backend_tokenizer.to_str()`), added tokens included.
        hf_encode: HF's content encoding (special-token strings as plain text), the reference; None
            skips the proof (a worker whose parent proved the same tokenizer).
    """
    encoder = fast_encoder(backend, serialized, threads)
    difference = None if hf_encode is None else first_difference(encoder, hf_encode)
    if difference is not None:
        raise FastEncoderRefused(f"it differs from the HF tokenizer on {difference}")
    return encoder
