"""What identifies a unit: the sha256 of the bytes it reads, and its fingerprint.

A unit's fingerprint is the sha256 of everything that decides its shard bytes: the format version, the
tokenizer's content fingerprint, the resolved config without paths, and per file it reads its name (written
into rejects), its content digest and its row-group range. Never where things are: the same data and
tokenizer reached by another path resume. A shard whose manifest holds its unit's fingerprint is complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from packsft.config import PackConfig, bytes_config
from packsft.read.inputs import Location, content_sha256
from packsft.render.tokenizer_cache import cache_key, read_entry, write_entry
from packsft.write.layout import FORMAT_VERSION

# 2: units are identified by content (input bytes, tokenizer files), not by paths and mtimes (1).
IDENTITY_VERSION = 2


def input_digest(path: Location, file_bytes: int, mtime_ns: int, row_groups: tuple[int, int] | None) -> str:
    """The sha256 of the bytes a local unit reads, cached by path, size, mtime and row groups (a rerun reads the
    cache, not the data); "" for a URL."""
    if not isinstance(path, Path):
        return ""
    facts = {"path": str(path.resolve()), "bytes": file_bytes, "mtime_ns": mtime_ns,
             "row_groups": list(row_groups) if row_groups is not None else None}
    key = cache_key("input-content", facts)
    entry = read_entry("inputs", key)
    if entry is not None and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = content_sha256(path, row_groups)
    write_entry("inputs", key, {"sha256": digest})
    return digest


def fingerprint_config(config: PackConfig) -> dict[str, Any]:
    return bytes_config(config.to_dict())


def fingerprint(config: PackConfig, tokenizer_fingerprint: str, inputs: list[list[Any]]) -> str:
    """sha256 of everything that decides a unit's shard bytes.

    Args:
        inputs: what identifies each file the unit reads (`Unit.identity()`), its own file first.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint,
        "config": fingerprint_config(config),
        "input": inputs[0],
    }
    if len(inputs) > 1:  # only grouped units have this key: the fingerprints of other units stay as they were
        payload["more"] = inputs[1:]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
