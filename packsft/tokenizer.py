"""Load a Hugging Face tokenizer, add the seed's role tokens, and fingerprint it.

The fingerprint (a sha256 over the serialized tokenizer, the chat template and the special ids)
is stored in `dataset.json`, so that an output can never be silently read with another tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from packsft.config import ENCODERS
from packsft.encoder import FastEncoder, FastEncoderRefused, build_fast_encoder
from packsft.errors import TokenizerError
from packsft.records import ASSISTANT, SYSTEM, USER

BOS_TOKEN = "<|beginoftext|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = {USER: "<|user|>", ASSISTANT: "<|assistant|>", SYSTEM: "<|system|>"}

# Fingerprints of tokenizers whose fast encoder this process has proven: a second load skips the probes.
_PROVEN: set[str] = set()

# Token ids up to this bound fit a uint16 array; larger vocabularies are stored as uint32.
UINT16_VOCAB_LIMIT = 1 << 16


@dataclass(frozen=True)
class PackTokenizer:
    """A loaded tokenizer plus the ids packsft needs. `hf` is the transformers tokenizer."""

    hf: Any
    name: str
    template: str
    bos_id: int | None
    eos_id: int
    pad_id: int
    role_ids: dict[str, int]
    vocab_size: int
    files_sha256: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    # The content encoder in use: "fast" (encoder.FastEncoder, proven equal to HF at load) or "hf";
    # `encoder_note` says why auto chose HF. Neither is part of the identity: the ids are the same.
    encoder: Literal["fast", "hf"] = "hf"
    encoder_note: str | None = None
    fast: FastEncoder | None = field(default=None, repr=False, compare=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, exactly as `hf.encode(text, add_special_tokens=False)` gives them.

        One call into the Rust tokenizer for the whole batch: it runs on all cores and skips the
        per-call Python overhead of `encode`.
        """
        backend = self.hf.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
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
        if self.fast is not None:
            return self.fast.encode_texts(texts)
        return self.encode_texts_hf(texts)

    def encode_texts_hf(self, texts: list[str]) -> list[list[int]]:
        """`encode_texts` computed by the HF tokenizer: the reference the fast encoder is proven against."""
        backend = self.hf.backend_tokenizer
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            return self.encode_batch(texts)
        finally:
            backend.encode_special_tokens = previous

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
            "chat_template_sha256": chat_template_sha256(self.hf),
        }


def load_tokenizer(
    name_or_path: str, template: str = "roles", *, trust_remote_code: bool = False, encoder: str = "hf",
    prove: bool = True, threads: int | None = None,
) -> PackTokenizer:
    """Load a fast tokenizer from a local folder (or the model hub, when online) and prepare it.

    Args:
        encoder: "hf" encodes content with the HF tokenizer; "fast" with encoder.FastEncoder, or raises
            TokenizerError where it is not proven equal; "auto" uses fast where proven, else HF.
        prove: compare the fast encoder with HF on the probe set at load; a worker whose parent proved
            it for the same tokenizer fingerprint skips that.
        threads: threads of the fast encoder (default: the CPUs this process may use).
    """
    if encoder not in ENCODERS:
        raise TokenizerError(f"encoder {encoder!r} is not one of {', '.join(ENCODERS)}")
    hf = _load_hf(name_or_path, trust_remote_code)
    if template == "roles":
        hf.add_special_tokens(
            {"bos_token": BOS_TOKEN, "pad_token": PAD_TOKEN, "additional_special_tokens": list(ROLE_TOKENS.values())}
        )
        role_ids = {role: hf.convert_tokens_to_ids(token) for role, token in ROLE_TOKENS.items()}
        bos_id, pad_id = hf.bos_token_id, hf.pad_token_id
    else:
        if not getattr(hf, "chat_template", None):
            raise TokenizerError(
                f"tokenizer {name_or_path!r} has no chat template; use --template roles to render with role tokens"
            )
        role_ids = {}
        bos_id = None
        pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id

    tokenizer = PackTokenizer(
        hf=hf,
        name=name_or_path,
        template=template,
        bos_id=bos_id,
        eos_id=hf.eos_token_id,
        pad_id=pad_id,
        role_ids=role_ids,
        vocab_size=len(hf),
    )
    serialized = hf.backend_tokenizer.to_str()
    files = _hash_files(Path(name_or_path)) if Path(name_or_path).is_dir() else {}
    tokenizer = replace(tokenizer, files_sha256=files, fingerprint=_fingerprint(tokenizer, serialized))
    return _with_encoder(tokenizer, serialized, encoder, prove, threads)


def _load_hf(name_or_path: str, trust_remote_code: bool) -> Any:
    """The transformers tokenizer, checked to be a fast one with an EOS token."""
    looks_like_path = os.sep in name_or_path or name_or_path.startswith(".") or Path(name_or_path).exists()
    if looks_like_path and not Path(name_or_path).is_dir():
        raise TokenizerError(
            f"tokenizer {name_or_path!r}: no such folder. Pass a folder holding tokenizer files "
            "(tokenizer.json, or vocab.json + merges.txt) or a model-hub name"
        )
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
    tokenizer: PackTokenizer, serialized: str, encoder: str, prove: bool, threads: int | None
) -> PackTokenizer:
    """The tokenizer with the content encoder `encoder` asks for (see load_tokenizer)."""
    if encoder == "hf":
        return tokenizer
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    prove = prove and tokenizer.fingerprint not in _PROVEN
    try:
        fast = build_fast_encoder(serialized, tokenizer.encode_texts_hf if prove else None, threads)
    except FastEncoderRefused as refused:
        if encoder == "fast":
            raise TokenizerError(
                f"--encoder fast: tokenizer {tokenizer.name!r} is not one the fast encoder reproduces ({refused}). "
                "Use --encoder auto or hf"
            ) from None
        return replace(tokenizer, encoder_note=f"the fast encoder does not reproduce this tokenizer: {refused}")
    _PROVEN.add(tokenizer.fingerprint)
    return replace(tokenizer, encoder="fast", fast=fast)


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


def chat_template_sha256(hf: Any) -> str | None:
    """sha256 of the tokenizer's chat template text (None without one); several named templates hash together."""
    template = getattr(hf, "chat_template", None)
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


def _fingerprint(tokenizer: PackTokenizer, serialized: str) -> str:
    """sha256 of the serialized tokenizer (`backend_tokenizer.to_str()`), chat template and special ids."""
    digest = hashlib.sha256()
    digest.update(serialized.encode("utf-8"))
    digest.update((getattr(tokenizer.hf, "chat_template", None) or "").encode("utf-8"))
    digest.update(json.dumps(tokenizer.special_ids, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()
