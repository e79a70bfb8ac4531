"""Load a Hugging Face tokenizer, add the seed notebook's role tokens, and fingerprint it.

The fingerprint (a sha256 over the serialized tokenizer, the chat template and the special ids)
is stored in `dataset.json`, so that an output can never be silently read with another tokenizer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from tokenizers import Tokenizer

from packsft.config import ENCODERS
from packsft.errors import ConfigError, TokenizerError
from packsft.read.records import ASSISTANT, SYSTEM, USER
from packsft.render.encoder import (
    BACKENDS,
    Backend,
    FastEncoder,
    FastEncoderRefused,
    GigatokenSource,
    build_fast_encoder,
    byte_decoder,
    fast_encoder,
    prebuild_ranks,
)
from packsft.render.rank_file import proven_ranks
from packsft.render.tokenizer_cache import cache_dir, cache_key, claim, read_entry, write_entry, write_file

BOS_TOKEN = "<|beginoftext|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = {USER: "<|user|>", ASSISTANT: "<|assistant|>", SYSTEM: "<|system|>"}

# (fingerprint, backend) of the fast encoders this process has proven: a second load skips the probes.
_PROVEN: set[tuple[str, str]] = set()

# Token ids in memory (rendering, splitting, packing): 4 bytes; the writer narrows to the storage dtype.
TOKEN_ID_DTYPE = np.dtype(np.int32)

# Token ids up to this bound fit a uint16 array; larger vocabularies are stored as uint32.
UINT16_VOCAB_LIMIT = 1 << 16


@dataclass(frozen=True)
class ChatTemplateFile:
    """A chat template read from a file (`--chat-template`), replacing the tokenizer's own."""

    path: str  # absolute, so that workers and `verify --deep` elsewhere find the same file
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def read_chat_template(path: str | Path) -> ChatTemplateFile:
    """The chat template text of a file (a .jinja file, read as UTF-8 text)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--chat-template {path}: no such file; pass a .jinja file holding a chat template") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--chat-template {path}: cannot be read as text ({exc})") from None
    if not text.strip():
        raise ConfigError(f"--chat-template {path}: the file is empty; pass a .jinja file holding a chat template")
    return ChatTemplateFile(str(file.resolve()), text)


@dataclass(frozen=True)
class AddedTokens:
    """A tokenizer's added tokens (its serialized `added_tokens`), which the Rust tokenizer's `token_to_id` and
    `id_to_token` look up before its vocabulary: enough to name every special and stop token without building it."""

    ids: dict[str, int]  # content -> id
    contents: dict[int, str]  # id -> content
    special: tuple[str, ...]  # contents of the special ones, in id order
    normalized: tuple[str, ...] = ()  # contents of those matched in the normalized text ("normalized": true)


# What comes before a key ("{" or ","), or before its value (":"), in a JSON object.
_JSON_SEPARATOR = re.compile(r"\s*[{,:]\s*")


def read_added_tokens(serialized: str) -> AddedTokens:
    """The added tokens of a serialized tokenizer, parsed without its vocabulary and merges.

    The top-level members are read in order until `added_tokens`, which tokenizers writes fourth, before the
    model (qwen3: its first 5 kB of 11 MB), so the megabytes after it are never parsed.
    """
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    at = 0
    while (before_key := _JSON_SEPARATOR.match(serialized, at)) is not None:
        key, at = decoder.raw_decode(serialized, before_key.end())
        before_value = _JSON_SEPARATOR.match(serialized, at)
        if before_value is None:
            break
        value, at = decoder.raw_decode(serialized, before_value.end())
        if key == "added_tokens":
            found = value or []
            break
    found = sorted(found, key=lambda a: a["id"])
    return AddedTokens(ids={a["content"]: a["id"] for a in found}, contents={a["id"]: a["content"] for a in found},
                       special=tuple(a["content"] for a in found if a.get("special")),
                       normalized=tuple(a["content"] for a in found if a.get("normalized", True)))


@dataclass
class TokenizerObjects:
    """What a PackTokenizer builds from its fields on first use: the Rust tokenizer (`backend`), the
    transformers tokenizer (`hf`), the fast encoder (`fast`) and the added tokens (`added`).

    A PackTokenizer and its `dataclasses.replace` copies share one (load_tokenizer gives a copy with other
    `threads` a new one without `fast`). It pickles empty: a process that receives a PackTokenizer builds
    what it uses (a FastEncoder's thread pool cannot be pickled).
    """

    backend: Any = None  # tokenizers.Tokenizer
    hf: Any = None  # a transformers PreTrainedTokenizerFast
    fast: FastEncoder | None = None
    added: AddedTokens | None = None

    def __reduce__(self) -> tuple[type[TokenizerObjects], tuple[()]]:
        return TokenizerObjects, ()


@dataclass(frozen=True)
class PackTokenizer:
    """A tokenizer plus the ids packsft needs.

    `backend` (a `tokenizers.Tokenizer`, rebuilt from `serialized`) and `hf`, the transformers tokenizer,
    are built only when something needs them (held in `objects`): with the fast encoder proven, `pack
    --template roles` needs neither (importing transformers imports torch: seconds; see tokenizer_cache.py).
    """

    name: str
    template: str
    bos_id: int | None
    eos_id: int
    pad_id: int
    role_ids: dict[str, int]
    vocab_size: int
    files_sha256: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    chat_template: str | dict[str, str] | None = None
    # The file `chat_template` was read from where it replaces the tokenizer's own (--chat-template), else None.
    chat_template_file: str | None = None
    # The strings of the special tokens (added special tokens and the special-tokens map), as transformers
    # lists them: content holding one is counted (roles.count_special_strings) without loading transformers.
    special_tokens: tuple[str, ...] = ()
    # transformers' `special_tokens_map` (bos_token, eos_token, ...): what a chat template sees besides the messages.
    special_tokens_map: dict[str, Any] = field(default_factory=dict, compare=False)
    trust_remote_code: bool = False
    # The content encoder in use: a fast backend (encoder.BACKENDS, proven equal to HF at load) or "hf";
    # `encoder_note` says why auto chose HF. Neither is part of the identity: the ids are the same.
    encoder: Backend | Literal["hf"] = "hf"
    encoder_note: str | None = None
    # Who renders chat templates: transformers' jinja renderer without its tokenizer ("jinja"), or
    # `apply_chat_template` ("hf", where a probe showed them differ; see chat_proof.with_chat_path_proven).
    chat_renderer: Literal["jinja", "hf"] = "jinja"
    # Every id the model may emit to stop generating: `eos_id` and the `eos_token_id` list of the folder's
    # generation_config.json (GLM's next role tokens, Llama 3's <|eom_id|>). A chat-template turn is trained
    # through the first of them it renders.
    stop_ids: tuple[int, ...] = ()
    threads: int = 1
    serialized: str = field(default="", repr=False, compare=False)
    objects: TokenizerObjects = field(default_factory=TokenizerObjects, repr=False, compare=False)

    @property
    def backend(self) -> Any:
        """The `tokenizers.Tokenizer` that HF encodes with."""
        if self.objects.backend is None:
            self.objects.backend = Tokenizer.from_str(self.serialized)
        return self.objects.backend

    @property
    def added_tokens(self) -> AddedTokens:
        """The added tokens, read from `serialized` (milliseconds; the backend takes ~0.4 s and ~50 MiB for qwen3)."""
        if self.objects.added is None:
            self.objects.added = read_added_tokens(self.serialized)
        return self.objects.added

    def token_to_id(self, token: str) -> int | None:
        """`backend.token_to_id`: an added token's id is read from `added_tokens`, so a chat worker whose special
        and stop tokens are all added tokens never builds the backend."""
        found = self.added_tokens.ids.get(token)
        return found if found is not None else self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """`backend.id_to_token`, an added token's read from `added_tokens` (see `token_to_id`)."""
        found = self.added_tokens.contents.get(token_id)
        return found if found is not None else self.backend.id_to_token(token_id)

    @property
    def hf(self) -> Any:
        """The transformers tokenizer with packsft's tokens added (loaded on first use, checked to be this one)."""
        if self.objects.hf is None:
            override = self.chat_template if self.chat_template_file and isinstance(self.chat_template, str) else None
            hf = _prepared_hf(self.name, self.template, self.trust_remote_code, override)
            template = getattr(hf, "chat_template", None) or None
            if _fingerprint(hf.backend_tokenizer.to_str(), template, self.special_ids, self.stop_ids) != self.fingerprint:
                raise TokenizerError(f"tokenizer {self.name!r} changed since it was loaded (fingerprint differs); rerun")
            self.objects.hf = hf
        return self.objects.hf

    @property
    def fast(self) -> FastEncoder | None:
        """The fast content encoder where it is in use (built on first use: a process that only plans needs none)."""
        if self.encoder == "hf":
            return None
        if self.objects.fast is None:
            source = gigatoken_source(self.fingerprint, self.serialized) if self.encoder == "gigatoken" else None
            self.objects.fast = fast_encoder(self.encoder, self.serialized, self.threads, check_order=False,
                                             source=source)
        return self.objects.fast

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, exactly as `hf.encode(text, add_special_tokens=False)` gives them.

        One call into the Rust tokenizer for the whole batch: it runs on all cores and skips the
        per-call Python overhead of `encode`.
        """
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text encoded as ordinary text: message content, never control tokens.

        A special-token string inside a text (`<|endoftext|>`, a role token, `<|im_start|>`) is split
        into ordinary tokens like any other text, so the only control tokens in a row are the ones packsft
        puts there. Texts without such strings get exactly the ids of `encode_batch`. This is the Hugging
        Face tokenizer's `split_special_tokens=True`, switched on for this call only, because the same
        tokenizer encodes chat-template renderings whose own special tokens must stay special. The fast
        encoder, where in use, gives the same ids (proven at load) several times faster.
        """
        fast = self.fast
        if fast is not None:
            return fast.encode_texts(texts)
        return self.encode_texts_hf(texts)

    def encode_texts_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_texts` as one flat TOKEN_ID_DTYPE array and the length of each text.

        The fast encoder fills numpy buffers directly: a batch never becomes Python lists of ints
        (~36 bytes per token), which is most of what rendering a batch allocates.
        """
        fast = self.fast
        if fast is not None:
            return fast.encode_texts_flat(texts)
        return flatten_ids(self.encode_texts_hf(texts))

    def encode_few(self, texts: list[str]) -> list[list[int]]:
        """`encode_texts` of a few short texts by whichever encoder this process has built already (the HF tokenizer
        where neither is: it builds in half the time of a fast encoder); the ids are the same, proven at load. A
        re-pack, which encodes nothing else, builds no fast encoder for them."""
        if self.objects.fast is not None:
            return self.encode_texts(texts)
        return self.encode_texts_hf(texts)

    def encode_texts_hf(self, texts: list[str]) -> list[list[int]]:
        """`encode_texts` computed by the HF tokenizer: the reference the fast encoder is proven against."""
        previous = self.backend.encode_special_tokens
        self.backend.encode_special_tokens = True
        try:
            return self.encode_batch(texts)
        finally:
            self.backend.encode_special_tokens = previous

    @property
    def token_dtype(self) -> str:
        return "uint16" if self.vocab_size <= UINT16_VOCAB_LIMIT else "uint32"

    @property
    def special_ids(self) -> dict[str, int | None]:
        return {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id, **self.role_ids}

    def identity(self) -> dict[str, Any]:
        """What dataset.json records about the tokenizer."""
        return {
            "name": self.name,
            "template": self.template,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "files_sha256": self.files_sha256,
            "special_ids": self.special_ids,
            "chat_template_sha256": chat_template_sha256(self.chat_template),
            **({"stop_ids": list(self.stop_ids)} if self.template == "chat" else {}),
            # The text too, so that whoever reloads the tokenizer (inspect, verify --deep) needs no file.
            **({"chat_template_file": {"path": self.chat_template_file,
                                       "sha256": chat_template_sha256(self.chat_template)},
                "chat_template": self.chat_template} if self.chat_template_file else {}),
        }

    def state(self) -> dict[str, Any]:
        """Everything a process needs to rebuild this tokenizer without transformers (JSON-able, picklable)."""
        return {
            "serialized": self.serialized, "template": self.template, "bos_id": self.bos_id,
            "eos_id": self.eos_id, "pad_id": self.pad_id, "role_ids": self.role_ids,
            "vocab_size": self.vocab_size, "files_sha256": self.files_sha256, "fingerprint": self.fingerprint,
            "chat_template": self.chat_template, "special_tokens": list(self.special_tokens),
            "special_tokens_map": self.special_tokens_map, "chat_renderer": self.chat_renderer,
            "stop_ids": list(self.stop_ids), "chat_template_file": self.chat_template_file,
        }



def flatten_ids(encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids as one flat TOKEN_ID_DTYPE array and the length of each list (encode_texts_flat's shape)."""
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    return np.fromiter(chain.from_iterable(encoded), TOKEN_ID_DTYPE, int(lengths.sum())), lengths


def tokenizer_from_state(
    state: dict[str, Any], name: str, *, trust_remote_code: bool = False, encoder: str = "hf", threads: int = 1
) -> PackTokenizer:
    """A PackTokenizer rebuilt from `state()` (a worker, or the cache), its fingerprint checked.

    `encoder` is taken as decided: a fast backend only where the caller proved it for this fingerprint (any
    other value, such as an older plan's "fast", encodes with HF: the same ids).
    """
    stop_ids = tuple(state.get("stop_ids") or (state["eos_id"],))
    special = {"bos": state["bos_id"], "eos": state["eos_id"], "pad": state["pad_id"], **state["role_ids"]}
    if _fingerprint(state["serialized"], state["chat_template"], special, stop_ids) != state["fingerprint"]:
        raise TokenizerError(f"tokenizer {name!r}: the saved tokenizer state does not match its fingerprint")
    return PackTokenizer(
        name=name, template=state["template"],
        bos_id=state["bos_id"], eos_id=state["eos_id"], pad_id=state["pad_id"], role_ids=dict(state["role_ids"]),
        vocab_size=state["vocab_size"], files_sha256=dict(state["files_sha256"]), fingerprint=state["fingerprint"],
        chat_template=state["chat_template"], chat_template_file=state.get("chat_template_file"),
        special_tokens=tuple(state["special_tokens"]),
        special_tokens_map=dict(state["special_tokens_map"]),
        chat_renderer="hf" if state.get("chat_renderer") == "hf" else "jinja", stop_ids=stop_ids,
        trust_remote_code=trust_remote_code,
        encoder=encoder if encoder in BACKENDS else "hf", threads=threads, serialized=state["serialized"],
    )


def load_tokenizer(
    name_or_path: str, template: str = "roles", *, chat_template: ChatTemplateFile | None = None,
    trust_remote_code: bool = False, encoder: str = "hf", prove: bool = True, threads: int | None = None,
    cache: bool = True,
) -> PackTokenizer:
    """Load a fast tokenizer from a local folder (or the model hub, when online) and prepare it.

    Args:
        template: "roles", "chat", or "auto": chat where the tokenizer has a chat template (or
            `chat_template` gives one), else roles. The tokenizer's `template` says which it got.
        chat_template: a template that replaces the tokenizer's own, before the fingerprint is taken.
        encoder: "hf" encodes content with the HF tokenizer; "gigatoken" or "tiktoken" with that backend
            (encoder.py), or raises TokenizerError where it is not proven equal; "fast" with the first
            backend proven (else that error); "auto" the first proven, else HF.
        prove: compare the fast encoder with HF on the probe set at load (unless this process or the
            cache already holds the verdict for this tokenizer fingerprint and backend).
        threads: threads of the fast encoder (default: the CPUs this process may use).
        cache: read and write the resolved tokenizer in the cache (tokenizer_cache.py): a folder loaded
            before loads without importing transformers.
    """
    if encoder not in ENCODERS:
        raise TokenizerError(f"encoder {encoder!r} is not one of {', '.join(ENCODERS)}")
    _check_path(name_or_path)
    files = _hash_files(Path(name_or_path)) if Path(name_or_path).is_dir() else {}
    # Hub names have no files to key on: they always load through transformers.
    if template not in ("auto", "roles", "chat"):
        raise TokenizerError(f"template {template!r} is not one of auto, roles, chat")
    if chat_template is not None and template == "roles":
        raise TokenizerError("a chat template file does not apply to --template roles; pass --template chat or auto")
    template = "chat" if chat_template is not None else template
    key = _cache_key(files, template, trust_remote_code, chat_template)
    entry = read_entry("tokenizers", key) if cache and files else None
    tokenizer = None
    if entry is not None:
        with contextlib.suppress(TokenizerError, KeyError, TypeError, ValueError):
            tokenizer = tokenizer_from_state(entry, name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        tokenizer = _load_with_transformers(name_or_path, template, trust_remote_code, files, chat_template)
        if cache and files:
            write_entry("tokenizers", key, tokenizer.state())
            if template == "auto":  # a load that names the template auto resolved to (a re-pack's plan) finds it too
                write_entry("tokenizers", _cache_key(files, tokenizer.template, trust_remote_code, chat_template),
                            tokenizer.state())
    # A cached entry names the file of the run that wrote it: this run's file holds the same text.
    tokenizer = replace(tokenizer, chat_template_file=chat_template.path if chat_template else None)
    return _with_encoder(tokenizer, encoder, prove, threads, cache)


def _cache_key(files: dict[str, str], template: str, trust_remote_code: bool,
               chat_template: ChatTemplateFile | None) -> str:
    """The tokenizer cache's key of a loaded tokenizer. The tokens packsft adds are part of it: an edit to them is a
    miss, not a stale tokenizer. An auto entry holds the template auto resolved to; the file that replaces the chat
    template is keyed by content."""
    return cache_key("tokenizer", {"files": files, "template": template, "trust_remote_code": trust_remote_code,
                                   "added": [BOS_TOKEN, PAD_TOKEN, ROLE_TOKENS],
                                   **({"chat_template": chat_template.sha256} if chat_template else {})})


def load_output_tokenizer(identity: dict[str, Any], name: str | None = None, **options: Any) -> PackTokenizer:
    """The tokenizer a dataset.json `tokenizer` record names (or `name`, where the folder moved), with the
    template it packed with: its resolved `template` and the --chat-template text stored there (no file needed).

    `options` go to load_tokenizer. The caller compares the fingerprint with the record's.
    """
    stored = identity.get("chat_template_file")
    chat_template = ChatTemplateFile(stored["path"], identity["chat_template"]) if stored else None
    return load_tokenizer(name or identity["name"], identity.get("template", "roles"), chat_template=chat_template,
                          **options)


def _load_with_transformers(name_or_path: str, template: str, trust_remote_code: bool, files: dict[str, str],
                            chat_template: ChatTemplateFile | None = None) -> PackTokenizer:
    """The tokenizer as transformers resolves it, with packsft's tokens and ids (`auto` resolved here)."""
    hf = _load_hf(name_or_path, trust_remote_code)
    if chat_template is not None:
        hf.chat_template = chat_template.text
    if template == "auto":
        template = "chat" if getattr(hf, "chat_template", None) else "roles"
    _prepare_hf(hf, name_or_path, template)
    if template == "roles":
        role_ids = {role: hf.convert_tokens_to_ids(token) for role, token in ROLE_TOKENS.items()}
        bos_id, pad_id = hf.bos_token_id, hf.pad_token_id
    else:
        role_ids = {}
        bos_id = None
        pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
    chat_template = getattr(hf, "chat_template", None) or None
    serialized = hf.backend_tokenizer.to_str()
    stop_ids = _stop_ids(hf, name_or_path) if template == "chat" else (hf.eos_token_id,)
    special = {"bos": bos_id, "eos": hf.eos_token_id, "pad": pad_id, **role_ids}
    return PackTokenizer(
        name=name_or_path, template=template, bos_id=bos_id, eos_id=hf.eos_token_id,
        pad_id=pad_id, role_ids=role_ids, vocab_size=len(hf), files_sha256=files,
        fingerprint=_fingerprint(serialized, chat_template, special, stop_ids), chat_template=chat_template,
        special_tokens=_special_token_strings(hf), special_tokens_map=_plain(hf.special_tokens_map),
        stop_ids=stop_ids, trust_remote_code=trust_remote_code, serialized=serialized,
        objects=TokenizerObjects(backend=hf.backend_tokenizer, hf=hf),
    )


def _stop_ids(hf: Any, name_or_path: str) -> tuple[int, ...]:
    """EOS and the `eos_token_id` of generation_config.json beside the tokenizer (an int or a list), as the
    model's generate() stops on them; ids outside the vocabulary are left out."""
    ids = [hf.eos_token_id]
    config = Path(name_or_path) / "generation_config.json"
    if config.is_file():
        try:
            listed = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError) as exc:
            raise TokenizerError(f"{config}: not a JSON object ({exc}); fix or remove the file") from None
        listed = listed if isinstance(listed, list) else [listed]
        ids += [i for i in listed if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(hf)]
    return tuple(dict.fromkeys(ids))

def _special_token_strings(hf: Any) -> tuple[str, ...]:
    strings = {t.content for t in hf.added_tokens_decoder.values() if t.special} | set(hf.all_special_tokens)
    return tuple(sorted(s for s in strings if s))


def _plain(value: Any) -> Any:
    """`special_tokens_map` as JSON types (older transformers versions hold AddedToken objects in it)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _prepared_hf(name_or_path: str, template: str, trust_remote_code: bool, chat_template: str | None = None) -> Any:
    """The transformers tokenizer as `_load_with_transformers` prepared it (`chat_template` replacing its own)."""
    hf = _load_hf(name_or_path, trust_remote_code)
    if chat_template is not None:
        hf.chat_template = chat_template
    _prepare_hf(hf, name_or_path, template)
    return hf


def _prepare_hf(hf: Any, name_or_path: str, template: str) -> None:
    """Add the role tokens for `roles`, or check that there is a chat template for `chat`."""
    if template == "roles":
        hf.add_special_tokens(
            {"bos_token": BOS_TOKEN, "pad_token": PAD_TOKEN, "additional_special_tokens": list(ROLE_TOKENS.values())}
        )
    elif not getattr(hf, "chat_template", None):
        raise TokenizerError(
            f"tokenizer {name_or_path!r} has no chat template; use --template roles to render with role tokens"
        )


def _check_path(name_or_path: str) -> bool:
    """True when the name is a path (then it must be a folder), False for a model-hub name."""
    looks_like_path = os.sep in name_or_path or name_or_path.startswith(".") or Path(name_or_path).exists()
    if looks_like_path and not Path(name_or_path).is_dir():
        raise TokenizerError(
            f"tokenizer {name_or_path!r}: no such folder. Pass a folder holding tokenizer files "
            "(tokenizer.json, or vocab.json + merges.txt) or a model-hub name"
        )
    return looks_like_path


def _load_hf(name_or_path: str, trust_remote_code: bool) -> Any:
    """The transformers tokenizer, checked to be a fast one with an EOS token."""
    looks_like_path = _check_path(name_or_path)
    # transformers prints an advisory about PyTorch on import; packsft never needs a model.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    offline = None if looks_like_path else hub_unavailable()
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        # Without the hub only the local cache is tried: the hub client would retry for about a minute.
        hf = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                           **({"local_files_only": True} if offline else {}))
    except Exception as exc:  # transformers raises many types (OSError, ValueError, HTTP errors)
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if offline:
            raise TokenizerError(
                f"cannot load tokenizer {name_or_path!r}: it is a model-hub name, {offline}, and it is not in "
                "the local Hugging Face cache. Pass a local tokenizer folder: --tokenizer path/to/folder (holding "
                "tokenizer.json, or vocab.json + merges.txt; on a machine that reaches the hub, "
                f"AutoTokenizer.from_pretrained({name_or_path!r}).save_pretrained('folder') writes one)"
            ) from None
        raise TokenizerError(
            f"cannot load tokenizer {name_or_path!r}: {reason}. Pass a local tokenizer folder, "
            "or a model-hub name on a machine that can reach the hub"
        ) from None
    if not getattr(hf, "is_fast", False):
        raise TokenizerError(f"tokenizer {name_or_path!r} has no fast (Rust) implementation; packsft needs one")
    if hf.eos_token_id is None:
        raise TokenizerError(f"tokenizer {name_or_path!r} defines no EOS token; packsft ends every conversation with it")
    return hf


def _with_encoder(
    tokenizer: PackTokenizer, encoder: str, prove: bool, threads: int | None, cache: bool
) -> PackTokenizer:
    """The tokenizer with the content encoder `encoder` asks for (see load_tokenizer)."""
    if encoder == "hf":
        return tokenizer
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    tokenizer = replace(tokenizer, threads=threads, objects=replace(tokenizer.objects, fast=None))
    refusals = []
    for backend in BACKENDS if encoder in ("auto", "fast") else [b for b in BACKENDS if b == encoder]:
        refused = _fast_verdict(tokenizer, backend, prove, threads, cache)
        if refused is None:
            return replace(tokenizer, encoder=backend)
        refusals.append(f"{backend}: {refused}")
    why = "; ".join(refusals)
    if encoder != "auto":
        raise TokenizerError(
            f"--encoder {encoder}: tokenizer {tokenizer.name!r} is not one the fast encoder reproduces ({why}). "
            "Use --encoder auto or hf"
        ) from None
    return replace(tokenizer, encoder_note=f"no fast encoder reproduces this tokenizer: {why}")


def _fast_verdict(tokenizer: PackTokenizer, backend: Backend, prove: bool, threads: int, cache: bool) -> str | None:
    """None where the `backend` encoder is proven equal to HF for this tokenizer, else why it is refused.

    The proof runs once per tokenizer fingerprint, backend and library versions: this process and the cache
    remember it.
    """
    if (tokenizer.fingerprint, backend) in _PROVEN:
        return None
    key = cache_key("proof", {"fingerprint": tokenizer.fingerprint, "backend": backend})
    entry = read_entry("proofs", key) if cache else None
    if entry is not None and isinstance(entry.get("refused"), (str, type(None))):
        refused = entry["refused"]
    else:
        try:
            fast = build_fast_encoder(backend, tokenizer.serialized, tokenizer.encode_texts_hf if prove else None,
                                      threads)
        except FastEncoderRefused as exc:
            refused = str(exc)
        else:
            refused = None
            tokenizer.objects.fast = fast
        if prove and cache:  # the key holds the backends' versions ("absent" too): installing one is a miss
            write_entry("proofs", key, {"refused": refused})
    if refused is None:
        _PROVEN.add((tokenizer.fingerprint, backend))
    return refused


# A rank file being looked for longer than this was left by a process that died: looked for again.
RANKS_CLAIM_SECONDS = 600


def gigatoken_source(fingerprint: str, serialized: str) -> GigatokenSource:
    """What gigatoken is built from for this tokenizer: from the tokenizer cache where kept, else derived and kept.

    Deriving it parses and rewrites the whole tokenizer JSON (qwen3: 0.25 s, GPT-2: 0.06 s), which every worker
    of every pack paid before it encoded anything; the cached entry reads in milliseconds. Deriving also looks for a
    rank file that builds the same tokenizer in half the time (rank_file.py; qwen3 2.4 s, GPT-2 1.2 s, once per
    tokenizer), kept beside the entry: one worker of a pack looks (a claim); an entry another one writes meanwhile
    names none, and the looker's replaces it. The tokenizer.json is kept in a file of its own, read where it is
    needed: not where an intact rank file builds gigatoken (qwen3: 6.3 MB, 0.06 s a worker). A kept file whose bytes
    do not match the entry's hash is derived again.
    """
    key = gigatoken_key(fingerprint)
    entry = read_entry("gigatoken", key)
    if entry is not None:
        with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError):
            kept = _kept_source(entry, serialized)
            if kept is not None:
                return kept
    source = GigatokenSource.of(serialized)
    folder = cache_dir()
    # One worker looks for the rank file (qwen3: 2.4 s); the others write the entry without one and go on packing.
    claimed = folder / "gigatoken" / f".claim-{key}" if folder is not None else None
    looks = claimed is not None and claim(claimed, RANKS_CLAIM_SECONDS)
    proven = proven_ranks(source, claimed.with_name(f"{key}.tiktoken")) if looks and claimed is not None else None
    ranks = {} if proven is None or proven.ranks is None else {
        "ranks": proven.ranks.name, "scheme": proven.scheme, "rank_added": proven.rank_added,
        "ranks_sha256": hashlib.sha256(proven.ranks.read_bytes()).hexdigest()}
    plain = f"{key}.plain.json"
    if write_file("gigatoken", plain, source.plain_json):
        write_entry("gigatoken", key, {**source.entry(), "plain": plain,
                                       "sha256": hashlib.sha256(source.plain_json).hexdigest(), **ranks})
    if looks and claimed is not None:
        claimed.unlink(missing_ok=True)
    return proven or source


def gigatoken_key(fingerprint: str) -> str:
    """The tokenizer cache's key of gigatoken's input for a tokenizer (`gigatoken_source`). "ranks": an entry of this
    layout may name a rank file (rank_file.py); "plain": its tokenizer.json is a file of its own. Older entries are
    misses, derived again."""
    return cache_key("gigatoken", {"fingerprint": fingerprint, "ranks": 1, "plain": 1})


def remember_fast(location: str, tokenizer: PackTokenizer) -> None:
    """Note in the tokenizer cache which gigatoken entry the tokenizer at `location` (--tokenizer) encodes with, for
    `prebuild_fast` in the next pack's fork server (nothing where it encodes with another backend)."""
    if tokenizer.encoder != "gigatoken" or cache_dir() is None:
        return
    key, noted = _fast_for_key(location), {"gigatoken": gigatoken_key(tokenizer.fingerprint)}
    if read_entry("gigatoken-for", key) != noted:
        write_entry("gigatoken-for", key, noted)


def prebuild_fast(location: str) -> None:
    """Build gigatoken from the rank file the last pack with the tokenizer at `location` used (`remember_fast`), where
    the cache keeps it intact, for the processes forked from this one (render/encoder.py `prebuild_ranks`). A guess:
    where the tokenizer has changed since, its workers build their own, as without it."""
    noted = read_entry("gigatoken-for", _fast_for_key(location)) or {}
    entry = read_entry("gigatoken", noted["gigatoken"]) if isinstance(noted.get("gigatoken"), str) else None
    with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError, FastEncoderRefused):
        ranks = _intact_ranks(entry or {})
        if ranks is not None:
            prebuild_ranks(*ranks)


def _fast_for_key(location: str) -> str:
    return cache_key("gigatoken-for", {"tokenizer": os.path.abspath(location) if os.path.exists(location) else location})


def _kept_source(entry: dict[str, Any], serialized: str) -> GigatokenSource | None:
    """The source a cache entry keeps: with its rank file where that is there unchanged, its tokenizer.json then read
    only where needed (derived again where the kept file is gone or changed); else with that file read and checked
    now (None where it is gone or changed)."""
    folder = cache_dir()
    if folder is None or not isinstance(entry["plain"], str):
        return None
    path, digest = folder / "gigatoken" / entry["plain"], entry["sha256"]

    def kept() -> bytes | None:
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == digest:
                return data
        return None

    ranked = _with_ranks(GigatokenSource.from_entry(entry, lambda: kept() or GigatokenSource.of(serialized).plain_json),
                         entry)
    if ranked.ranks is not None:
        return ranked
    plain = kept()
    return GigatokenSource.from_entry(entry, plain) if plain is not None else None


def _with_ranks(source: GigatokenSource, entry: dict[str, Any]) -> GigatokenSource:
    """`source` with the rank file its cache entry names (rank_file.py), where the file is there unchanged."""
    ranks = _intact_ranks(entry)
    return source if ranks is None else replace(source, ranks=ranks[0], scheme=ranks[1], rank_added=ranks[2])


def _intact_ranks(entry: dict[str, Any]) -> tuple[Path, str, dict[str, int]] | None:
    """The rank file a gigatoken cache entry names, with its scheme and added tokens, where the file is there
    unchanged (its sha256 the entry's); else None."""
    folder = cache_dir()
    if folder is None or not isinstance(entry.get("ranks"), str) or not isinstance(entry.get("scheme"), str):
        return None
    path = folder / "gigatoken" / entry["ranks"]
    try:
        intact = hashlib.sha256(path.read_bytes()).hexdigest() == entry["ranks_sha256"]
    except OSError:
        return None
    return (path, entry["scheme"], dict(entry["rank_added"] or {})) if intact else None


# How long to wait for the model hub to answer before treating it as unreachable.
HUB_PROBE_SECONDS = 3.0


@functools.lru_cache(maxsize=1)
def hub_unavailable() -> str | None:
    """Why the model hub cannot be used now (offline mode set, or no answer within a few seconds), or None.

    One HEAD request to the hub endpoint (HF_ENDPOINT, through the usual proxy variables), in a thread
    so that a hanging name lookup is bounded too; any HTTP answer counts as reachable.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
    import urllib.error  # here: only a cache miss asks the hub (13 ms of import in every process otherwise)
    import urllib.request

    endpoint = constants.ENDPOINT
    answered = threading.Event()

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_SECONDS)
        except urllib.error.HTTPError:
            pass  # an HTTP error status is an answer
        except (OSError, ValueError):
            return
        answered.set()

    thread = threading.Thread(target=probe, name="packsft-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    return None if answered.is_set() else f"the hub ({endpoint}) did not answer within {HUB_PROBE_SECONDS:g} s"


def chat_template_sha256(template: str | dict[str, str] | None) -> str | None:
    """sha256 of a chat template text (None without one); several named templates hash together."""
    if not template:
        return None
    if isinstance(template, dict):
        template = "\n".join(f"{name}\n{text}" for name, text in sorted(template.items()))
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _hash_files(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def _fingerprint(serialized: str, chat_template: str | dict[str, str] | None, special_ids: dict[str, Any],
                 stop_ids: tuple[int, ...] = ()) -> str:
    """sha256 of the serialized tokenizer (`backend_tokenizer.to_str()`), chat template, special ids and the stop
    ids beyond EOS (only where there are any: a tokenizer without generation_config.json keeps its fingerprint)."""
    digest = hashlib.sha256()
    digest.update(serialized.encode("utf-8"))
    template = json.dumps(chat_template, sort_keys=True) if isinstance(chat_template, dict) else chat_template or ""
    digest.update(template.encode("utf-8"))
    digest.update(json.dumps(special_ids, sort_keys=True).encode("utf-8"))
    extra = sorted(set(stop_ids) - {special_ids.get("eos")})
    if extra:
        digest.update(json.dumps({"stop": extra}).encode("utf-8"))
    return digest.hexdigest()


class TokenTexts(Sequence[str]):
    """The text of every token id (byte-level stand-ins mapped back; a byte that is part of a longer character stays
    its latin-1 stand-in), each read at its first use: cutting a long turn reads the few thousand tokens around the
    cut, not a vocabulary of 150k (which took a re-pack of ShareGPT with qwen3 a second).

    Read from the Rust tokenizer (`of_backend`), or without it from a byte-level fast encoder's token bytes
    (`of_fast`): a byte-level vocabulary spells each byte by its stand-in, so the stand-ins map back to those bytes.
    """

    def __init__(self, size: int, read: Callable[[int], str]) -> None:
        self._size = size
        self._read = read  # an id's text, before SentencePiece's spellings are replaced
        self._texts: list[str | None] = [None] * self._size + [""]  # the last: the text of any id outside

    @classmethod
    def of_backend(cls, backend: Tokenizer) -> TokenTexts:
        return cls(backend.get_vocab_size(), lambda index: _spelled(backend.id_to_token(index) or ""))

    @classmethod
    def of_fast(cls, fast: FastEncoder, added: AddedTokens, size: int) -> TokenTexts:
        """Added tokens read first, as the Rust tokenizer's `id_to_token` reads them (the fast encoder may lack them)."""
        def read(index: int) -> str:
            token = added.contents.get(index)
            return _spelled(token) if token is not None else fast.token_bytes(index).decode("latin-1")

        return cls(size, read)

    @classmethod
    def of_vocab(cls, serialized: str, added: AddedTokens, size: int) -> TokenTexts | None:
        """Read from the serialized tokenizer's vocabulary (a re-pack builds no encoder: parsing the JSON takes a
        third of building the Rust tokenizer, and keeps only the tokens); None where its model has no vocabulary."""
        vocab = (json.loads(serialized).get("model") or {}).get("vocab")
        tokens: list[str] = [""] * size
        if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
            for token, index in vocab.items():
                if 0 <= index < size:
                    tokens[index] = token
        elif isinstance(vocab, list):  # Unigram: [token, score] by id
            for index, (token, _) in enumerate(vocab[:size]):
                tokens[index] = token
        else:
            return None
        return cls(size, lambda index: _spelled(added.contents.get(index, tokens[index])))

    def __len__(self) -> int:
        return self._size

    def texts_of(self, ids: np.ndarray) -> list[str]:
        """The text of each id ("" for an id outside the vocabulary), each read once: a cut reads thousands, and
        a list lookup costs a tenth of a call of `__getitem__`."""
        window = np.minimum(ids, self._size).tolist()
        for index in set(window):
            if self._texts[index] is None:
                self[index]
        return [self._texts[index] for index in window]

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._size))]
        text = self._texts[index]
        if text is None:
            text = self._read(index % self._size).replace("\u2581", " ").replace("<0x0A>", "\n")
            self._texts[index] = text
        return text


def _spelled(token: str) -> str:
    """A token as the Rust tokenizer spells it, with its byte-level stand-ins (where it is made of them) mapped back
    to bytes, read as latin-1."""
    decoder = byte_decoder()
    if token and all(char in decoder for char in token):
        return bytes(decoder[char] for char in token).decode("latin-1")
    return token


_TOKEN_TEXTS: dict[str, TokenTexts] = {}


def token_texts(tokenizer: PackTokenizer) -> TokenTexts:
    """The text of every token id: what pack/cuts.py reads to cut a long turn at a line, a sentence, never in a tool
    call. One per tokenizer and process, read from the fast encoder where this process built a byte-level one (a
    worker that has one then builds no Rust tokenizer), else from the Rust tokenizer where it is built, else from the
    serialized vocabulary (a re-pack builds neither)."""
    if tokenizer.fingerprint not in _TOKEN_TEXTS:
        fast, texts = tokenizer.objects.fast, None
        if fast is not None and fast.byte_level:
            texts = TokenTexts.of_fast(fast, tokenizer.added_tokens, tokenizer.vocab_size)
        elif tokenizer.objects.backend is None:
            texts = TokenTexts.of_vocab(tokenizer.serialized, tokenizer.added_tokens, tokenizer.vocab_size)
        _TOKEN_TEXTS[tokenizer.fingerprint] = texts if texts is not None else TokenTexts.of_backend(tokenizer.backend)
    return _TOKEN_TEXTS[tokenizer.fingerprint]
