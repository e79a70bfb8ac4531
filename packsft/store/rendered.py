"""The rendered-token store: one entry per unit rendering, keyed by everything that decides it.

    STORE/3f/3fa9…/                        key: sha256 of the tokenizer fingerprint, the config without its packing keys
      ids.npy flags.npy                    (config.PACKING_KEYS) and what identifies each input file the unit reads
      conv_offsets.npy conv_msg_offsets.npy msg_starts.npy msg_ends.npy msg_roles.npy msg_headers.npy
      unprompted.npy source_codes.npy      the RenderedBatch of the unit, as stages.read_unit returned it
      entry.json                           its mode, sources, read and chat counters, rejects, how each input was read,
                                           and the sha256 of each array file (a damaged entry is rendered again)
    STORE/markers/<fingerprint>.json       per tokenizer: the cut-down tokenizer that encodes the omission markers
                                           (render/markers.py), so that rows built from the store tokenize nothing

`run/unit.py` looks a unit up before reading it and saves what it rendered after. An entry appears whole or not at
all (written in a temporary folder, then renamed; not fsynced: what a crash tears, `load`'s sha256 checks find), and
two writers of one key write the same bytes, so either wins.
Nothing in an entry depends on --seq-length, --strategy or the row layout: rows built from it equal a fresh pack's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packsft.config import PACKING_KEYS, PackConfig, bytes_config
from packsft.read.records import RejectLedger
from packsft.render.batch import RenderedBatch
from packsft.render.markers import Marker, marker_encoder
from packsft.render.tokenizer import TOKEN_ID_DTYPE
from packsft.render.tokenizer_cache import claim
from packsft.stages import ReadUnit
from packsft.stats import ChatTurns, ReadCounts
from packsft.write.layout import FORMAT_VERSION, storage_dtype
from packsft.write.writer import narrow_tokens, save_npy

# The default store of an output: OUT_DIR/rendered (kept by --overwrite, which only replaces the rows).
STORE_DIR = "rendered"
# 1: the first layout (with the sha256 of each array). Bumped when an entry's files or their meaning change: older entries are then misses.
STORE_VERSION = 1
ENTRY_JSON = "entry.json"
# RenderedBatch arrays stored as they are (ids are narrowed to the vocabulary's storage dtype, sources coded).
ARRAYS = ("flags", "conv_offsets", "conv_msg_offsets", "msg_starts", "msg_ends", "msg_roles", "msg_headers",
          "unprompted")
FILES = ("ids", "source_codes", *ARRAYS)  # an entry's .npy files, each hashed in entry.json
MARKERS_DIR = "markers"
CLAIM_SECONDS = 600  # a marker encoder being made longer than this was left by a process that died: made again
_MARKERS: dict[Path, Marker | None] = {}  # per marker file: its encoder, built once a process


def rendering_key(config: PackConfig, tokenizer_fingerprint: str, inputs: list[list[Any]]) -> str:
    """sha256 of what decides a unit's rendering: the same as its shard fingerprint (run/identity.py) less the keys
    that only pack.

    Args:
        inputs: what identifies each file the unit reads (`Unit.identity()`), its own file first.
    """
    rendering = {key: value for key, value in bytes_config(config.to_dict()).items() if key not in PACKING_KEYS}
    payload = {"store_version": STORE_VERSION, "format_version": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint,
               "config": rendering, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class StoredUnit:
    """A unit as reading and rendering left it: what the pack stage takes, and what the shard manifest records."""

    read: ReadUnit
    rejects: RejectLedger
    inputs: list[dict[str, Any]]  # per input file: its rows and how it was read (InputFile.describe())


class RenderedStore:
    """A folder of rendered units, shared by any outputs that name it (`pack --store`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str, *, strict: bool = False) -> StoredUnit | None:
        """The unit stored under `key`, or None where there is none (or it cannot be read: it is rendered again)."""
        folder = self.entry(key)
        try:
            meta = json.loads((folder / ENTRY_JSON).read_text())
            if meta.get("store_version") != STORE_VERSION:
                return None
            arrays = {}
            for name in FILES:
                data = (folder / f"{name}.npy").read_bytes()
                if hashlib.sha256(data).hexdigest() != meta["sha256"][name]:
                    return None  # damaged since it was written: rendered again
                arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None
        batch = _batch(arrays, meta)
        if batch.conv_offsets[-1] != len(batch.ids) or len(batch.flags) != len(batch.ids):
            return None
        rejects = RejectLedger(strict=strict)
        rejects.replay(meta["rejects"])
        read = ReadUnit(batch, ReadCounts.from_dict(meta["read"]) if meta["read"] is not None else None,
                        ChatTurns.from_dict(meta["chat"]) if meta["chat"] is not None else None)
        return StoredUnit(read, rejects, meta["inputs"])

    def save(self, key: str, unit: StoredUnit, vocab_size: int) -> bool:
        """Write the entry for `key` atomically, replacing one that did not load (damaged, or of another version);
        False where it could not be written."""
        final = self.entry(key)
        tmp = final.parent / f".tmp-{key}-{os.getpid()}"
        batch = unit.read.batch
        names = sorted({s for s in batch.sources if s is not None})
        lookup = {name: code for code, name in enumerate(names)}
        codes = np.fromiter((lookup[s] if s is not None else -1 for s in batch.sources), np.int32, len(batch.sources))
        meta = {
            "store_version": STORE_VERSION, "mode": batch.mode, "special_strings": batch.special_strings,
            "sources": names, "read": unit.read.counts.to_dict() if unit.read.counts is not None else None,
            "chat": unit.read.chat.to_dict() if unit.read.chat is not None else None,
            "rejects": unit.rejects.entries, "inputs": unit.inputs,
        }
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            arrays = {"ids": narrow_tokens(batch.ids, storage_dtype(vocab_size), vocab_size), "source_codes": codes,
                      **{name: getattr(batch, name) for name in ARRAYS}}
            # Not fsynced: `load` checks every file's sha256 and renders again what a crash left torn or empty (a
            # cache, not an output). The 10 fsyncs a unit cost a GPT-2 pack of 4 ShareGPT shards about 3% of its
            # time (10 alternating runs: median 1.40 -> 1.35 s).
            meta["sha256"] = {name: save_npy(tmp / f"{name}.npy", array, durable=False)["sha256"]
                              for name, array in arrays.items()}
            (tmp / ENTRY_JSON).write_text(json.dumps(meta, ensure_ascii=True))
            if final.exists():
                old = final.parent / f".old-{key}-{os.getpid()}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        except OSError:
            # A full disk, or another writer of the same key that won the rename: the pack goes on without it.
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            return False
        return True

    def marker(self, fingerprint: str) -> Marker | None:
        """The omission-marker encoder kept for the tokenizer of this fingerprint (`keep_marker`), or None where
        there is none, or it is damaged (the tokenizer then encodes the markers)."""
        path = self._marker_path(fingerprint)
        if path not in _MARKERS:
            try:
                kept = json.loads(path.read_text())
                spec = kept["spec"]
                intact = hashlib.sha256(spec.encode()).hexdigest() == kept["sha256"]
                _MARKERS[path] = marker_encoder(spec) if intact else None
            except Exception:  # noqa: BLE001 - unreadable, or not a tokenizer (the library's own error): none kept
                return None
        return _MARKERS[path]

    def keep_marker(self, fingerprint: str, spec: Callable[[], str | None]) -> None:
        """Keep the marker encoder of this tokenizer, `spec()` (render/markers.marker_spec; None: there is none),
        where the store has none yet; like an entry, written whole or not at all."""
        path = self._marker_path(fingerprint)
        claimed = path.with_name(f".claim-{path.name}")
        if path.exists() or not claim(claimed, CLAIM_SECONDS):
            return  # kept, or another worker of the pack is making it (0.3 s for qwen3: one pays it)
        made = spec()
        if made is None:
            return  # none to keep: the claim stays, so that no other worker tries for CLAIM_SECONDS
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"sha256": hashlib.sha256(made.encode()).hexdigest(), "spec": made}))
            os.replace(tmp, path)
            claimed.unlink()
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _marker_path(self, fingerprint: str) -> Path:
        return self.root / MARKERS_DIR / f"{fingerprint}.json"

    def size(self) -> int:
        """Bytes the store's entries take."""
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())


def _batch(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> RenderedBatch:
    names: list[str] = meta["sources"]
    sources = [names[code] if code >= 0 else None for code in arrays["source_codes"].tolist()]
    return RenderedBatch(ids=arrays["ids"].astype(TOKEN_ID_DTYPE), sources=sources, mode=meta["mode"],
                         special_strings=meta["special_strings"], **{name: arrays[name] for name in ARRAYS})
