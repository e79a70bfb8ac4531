"""Write shards and dataset.json atomically (the layout is in layout.py).

Every file is written under a temporary name and renamed into place; a shard folder is renamed into
place only when complete. Arrays are plain .npy (never pickled).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from packsft.config import PackConfig
from packsft.errors import OutputError
from packsft.pack.rows import Chunks, row_lengths
from packsft.render.tokenizer import PackTokenizer
from packsft.stats import UnitCounters, summarize
from packsft.version import __version__
from packsft.write.layout import (
    FORMAT_VERSION,
    LOSS_MASK_NPY,
    MANIFEST_JSON,
    MARKER,
    MASK_DTYPE,
    OFFSET_DTYPE,
    PARQUET_FILE,
    ROW_SEGMENTS_NPY,
    SEGMENT_DTYPE,
    SEGMENT_LENGTHS_NPY,
    SHARD_FILES,
    SHARDS_DIR,
    TOKENS_NPY,
    shard_name,
    storage_dtype,
)


def atomic_write_stream(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(handle)` under a temporary name, fsync it, then rename it into place.

    The temporary name carries the host and pid: array tasks on several machines may share the folder.
    """
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); check free space and permissions") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_stream(path, lambda handle: handle.write(data))


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def prepare_output(out_dir: Path, overwrite: bool, keep: frozenset[str] = frozenset()) -> None:
    """Create OUT_DIR, or clear an earlier packsft output in it when asked to overwrite (all but the entries named in
    `keep`: its rendered-token store).

    A non-empty folder without packsft's marker is never touched: it may hold someone's data.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder. Pick another OUT_DIR")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).exists():
            raise OutputError(
                f"{out_dir}: not empty and not a packsft output; packsft never writes into or deletes "
                "other folders. Pick an empty or new OUT_DIR"
            )
        if not overwrite:
            raise OutputError(f"{out_dir}: already holds a packsft output. Pass --overwrite to replace it")
        # rmtree never follows symlinks, and a symlink child is unlinked, not its target: nothing
        # outside OUT_DIR is touched.
        try:
            for child in out_dir.iterdir():
                if child.name in keep:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        except OSError as exc:
            raise OutputError(f"{out_dir}: cannot clear the earlier output ({exc.strerror or exc}); check permissions") from None
    try:
        (out_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        (out_dir / MARKER).write_text("This folder was written by packsft; `packsft pack --overwrite` may replace it.\n")
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create output ({exc.strerror or exc})") from None


class HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it: a shard's sha256s cost no second read of its files."""

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__()
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += len(view)
        return self._handle.write(view)

    def tell(self) -> int:
        return self.size


def _write_hashed(path: Path, write: Callable[[BinaryIO], None], *, durable: bool = True) -> dict[str, Any]:
    """Write a file through `write`, fsync it (where `durable`), and return its size and sha256 (hashed while
    written)."""
    with open(path, "wb") as handle:
        hashing = HashingFile(handle)
        write(hashing)  # type: ignore[arg-type]
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
    return {"bytes": hashing.size, "sha256": hashing.sha256.hexdigest()}


def save_npy(path: Path, array: np.ndarray, *, durable: bool = True) -> dict[str, Any]:
    """Save `array` as .npy (no pickle), fsynced unless not `durable` (a file whose reader checks its sha256, and
    makes it again where it does not match); its shape, dtype, size and sha256 (hashed while written)."""
    written = _write_hashed(path, lambda handle: np.save(handle, array, allow_pickle=False), durable=durable)
    return {"shape": list(array.shape), "dtype": str(array.dtype), **written}


def narrow_tokens(tokens: np.ndarray, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """Cast token ids to the storage dtype, failing loudly if any id would not round-trip."""
    low, high = (int(tokens.min()), int(tokens.max())) if tokens.size else (0, 0)
    if low < 0 or high >= min(vocab_size, np.iinfo(dtype).max + 1):
        bad = high if high >= vocab_size else low
        raise OutputError(
            f"token id {bad} does not fit {dtype} storage for a vocabulary of {vocab_size}; "
            "the tokenizer produced an id outside its vocabulary"
        )
    if tokens.dtype.kind == "i" and dtype.kind == "u" and tokens.dtype.itemsize == dtype.itemsize:
        return tokens.view(dtype)  # ids checked >= 0 above: the same bytes, so no copy of the rows (4 bytes a position)
    return tokens.astype(dtype, copy=False)


def stored_arrays(chunks: Chunks, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The .npy arrays of a shard in their stored dtypes; `tokens` are already narrowed (narrow_tokens)."""
    return {
        TOKENS_NPY: tokens,
        LOSS_MASK_NPY: chunks.loss_mask.astype(MASK_DTYPE, copy=False),  # no copy of what is stored as it is
        SEGMENT_LENGTHS_NPY: chunks.segment_lengths.astype(SEGMENT_DTYPE, copy=False),
        ROW_SEGMENTS_NPY: chunks.row_segments.astype(OFFSET_DTYPE, copy=False),
    }


def write_shard(
    out_dir: Path,
    index: int,
    chunks: Chunks,
    *,
    vocab_size: int,
    output_format: str,
    manifest: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write one shard folder atomically and return its manifest (with file hashes).

    `extra_files` (name -> bytes, e.g. the unit's rejects.jsonl) are written into the folder too,
    before it is renamed into place, but are not listed in the manifest's `files`.
    """
    final = out_dir / SHARDS_DIR / shard_name(index)
    tmp = out_dir / SHARDS_DIR / f".tmp-{shard_name(index)}-{os.getpid()}"
    dtype = storage_dtype(vocab_size)
    tokens = narrow_tokens(chunks.tokens, dtype, vocab_size)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        files: dict[str, Any] = {}
        wanted = SHARD_FILES[output_format]
        if TOKENS_NPY in wanted:
            for name, array in stored_arrays(chunks, tokens).items():
                files[name] = save_npy(tmp / name, array)
        if PARQUET_FILE in wanted:
            files[PARQUET_FILE] = _write_hashed(tmp / PARQUET_FILE, lambda handle: write_parquet(handle, tokens, chunks))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        full = {**manifest, "shard": shard_name(index), "rows": chunks.rows, "dtype": str(dtype), "files": files}
        atomic_write_json(tmp / MANIFEST_JSON, full)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{final}: cannot write shard ({exc.strerror or exc}); check free space and permissions") from None
    return full


def build_dataset_manifest(
    manifests: list[dict[str, Any]],
    config: PackConfig,
    tokenizer: PackTokenizer | dict[str, Any],
    data_dir: str | Path,  # a folder, or the URL prefix of remote inputs
    skipped: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """dataset.json from the shard manifests; `tokenizer` is a PackTokenizer or its identity().

    `skipped` lists input files left out under --skip-bad-files (with why).
    """
    identity = tokenizer.identity() if isinstance(tokenizer, PackTokenizer) else tokenizer
    skipped = (skipped or []) + [m["skipped"] for m in manifests if m.get("skipped")]
    counters = UnitCounters()
    for manifest in manifests:
        try:
            counters += UnitCounters.from_dict(manifest["counters"])
        except ValueError as exc:  # counters no packsft writes: an edited or damaged manifest
            raise OutputError(f"{SHARDS_DIR}/{manifest['shard']}/{MANIFEST_JSON}: {exc}; delete that shard folder "
                              "and run the pack again to repack it") from None
    rows = sum(m["rows"] for m in manifests)
    return {
        "format_version": FORMAT_VERSION,
        "packsft_version": __version__,
        "config": config.to_dict(),
        "data_dir": str(data_dir),
        "tokenizer": identity,
        "seq_length": config.seq_length,
        "dtype": str(storage_dtype(identity["vocab_size"])),
        "rows": rows,
        "tokens": rows * (config.seq_length + 1),
        "stats": summarize(counters, config.seq_length, len(skipped)),
        "counters": counters.to_dict(),
        "skipped_files": skipped,
        "shards": [
            {"name": m["shard"], "rows": m["rows"], "inputs": m["inputs"], "files": m["files"],
             "fingerprint": m.get("fingerprint")}
            for m in manifests
        ],
    }


# chunks.parquet: one row per chunk, readable by `datasets.load_dataset("parquet", ...)` and TRL.
def seq_lengths(chunks: Chunks, capacity: int) -> pa.ListArray:
    pad = capacity - row_lengths(chunks.segment_lengths, chunks.row_segments)
    values, offsets = [], [0]
    for r in range(chunks.rows):
        row = chunks.segment_lengths[chunks.row_segments[r] : chunks.row_segments[r + 1]]
        values.append(row)
        if pad[r]:
            values.append(np.asarray([pad[r]], np.int32))
        offsets.append(offsets[-1] + len(row) + (1 if pad[r] else 0))
    flat = np.concatenate(values).astype(np.int32) if values else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, np.int32)), pa.array(flat))


def _fixed_lists(matrix: np.ndarray) -> pa.ListArray:
    rows, width = matrix.shape
    offsets = np.arange(rows + 1, dtype=np.int32) * width
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.reshape(-1)))


def write_parquet(path: Path | BinaryIO, tokens: np.ndarray, chunks: Chunks) -> None:
    table = pa.table(
        {
            "input_ids": _fixed_lists(tokens),
            "loss_mask": _fixed_lists(chunks.loss_mask),
            "seq_lengths": seq_lengths(chunks, tokens.shape[1]),
        }
    )
    pq.write_table(table, path, compression="zstd")
