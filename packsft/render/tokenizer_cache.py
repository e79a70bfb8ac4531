"""A small on-disk cache of resolved tokenizers and fast-encoder proofs, so `pack` starts without transformers.

    tokenizer folder --sha256 of its files + template + library versions--> key
      miss: transformers loads it (importing torch: seconds) -> TokenizerState -> cache/tokenizers/KEY.json
      hit:  cache/tokenizers/KEY.json -> PackTokenizer (milliseconds, no transformers; the Rust tokenizer is built
            from it only where something needs it: tokenizer.PackTokenizer.backend)

What transformers makes of a folder (the converted BPE, the added role tokens, the special ids) is a
function of the folder's files and the library versions, so those are the key; an entry is checked
against its own fingerprint when read, and anything unreadable is a miss. The fast encoder's proof
(the probe set compared with HF, seconds) is cached the same way, keyed by the tokenizer fingerprint, the
backend and the versions of tokenizers and the backends (gigatoken, tiktoken). `PACKSFT_CACHE` names the
folder (default `$XDG_CACHE_HOME/packsft` or `~/.cache/packsft`); `PACKSFT_CACHE=off` turns the cache off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from packsft.version import __version__

CACHE_ENV = "PACKSFT_CACHE"
CACHE_OFF = ("", "0", "off", "none")
# Bumped when what an entry holds changes meaning: older entries are then misses.
CACHE_FORMAT = 3
LIBRARIES = ("transformers", "tokenizers", "tiktoken", "gigatoken", "jinja2")


def cache_dir() -> Path | None:
    """The cache folder, or None when PACKSFT_CACHE turns the cache off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in CACHE_OFF else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "packsft"


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what a tokenizer folder becomes (read without importing them; once a
    process). Read from the names of the installed packages' `NAME-VERSION.dist-info` folders on sys.path, the first
    of a name as importlib.metadata finds it; importlib.metadata reads the others (an egg-info install): it took
    18-28 ms for these five, in the parent and the fork server as a pack starts, against about 1 ms."""
    versions = {"packsft": __version__, "format": str(CACHE_FORMAT)}
    listed = _dist_info_versions()
    for name in LIBRARIES:
        versions[name] = listed.get(name) or _metadata_version(name)
    return versions


def _dist_info_versions() -> dict[str, str]:
    """Version by package name (lower case, '-' for '_'), from the dist-info folders of sys.path, the first of a name."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # not a folder (a zip), or gone
            continue
        for folder in names:
            if folder.endswith(".dist-info"):
                name, _, version = folder[: -len(".dist-info")].partition("-")
                found.setdefault(name.lower().replace("_", "-"), version)
    return found


def _metadata_version(name: str) -> str:
    from importlib import metadata  # here: only where a library is not in a dist-info folder (5 ms of import)

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def cache_key(kind: str, facts: dict[str, Any]) -> str:
    """sha256 of the facts an entry depends on, with the library versions added."""
    payload = json.dumps({"kind": kind, **facts, "versions": dict(library_versions())}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_entry(kind: str, key: str) -> dict[str, Any] | None:
    """The cached entry, or None (no cache, no entry, or one that cannot be read)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        entry = json.loads((folder / kind / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def write_entry(kind: str, key: str, entry: dict[str, Any]) -> None:
    """Store an entry atomically; a cache that cannot be written is silently skipped (it only saves time)."""
    write_file(kind, f"{key}.json", json.dumps(entry, ensure_ascii=False).encode("utf-8"))


def write_file(kind: str, name: str, data: bytes) -> bool:
    """Store a file of the cache atomically (readers never see half of one); False where the cache is off or cannot
    be written."""
    folder = cache_dir()
    if folder is None:
        return False
    path = folder / kind / name
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def claim(path: Path, stale_seconds: float) -> bool:
    """Whether this process made the claim file `path`: created it first, or found it older than `stale_seconds`
    (its maker died). One of several workers that would each make the same cached thing makes it; the others go on
    without it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > stale_seconds:
                path.unlink()
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return False
    return True
