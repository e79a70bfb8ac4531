"""Write shards and the dataset manifest: the on-disk contract the loader, inspect and verify read.

    OUT_DIR/
      .packsft                 marker: this folder is a packsft output (packsft may replace it)
      dataset.json             written last: its presence means the output is complete
      rejects.jsonl            every rejected record: file, row, reason, excerpt
      shards/00000/
        tokens.npy             (rows, L+1) uint16 if the vocabulary fits 65536 ids, else uint32
        loss_mask.npy          (rows, L) uint8; loss_mask[r, i] = train flag of tokens[r, i+1]
        segment_lengths.npy    int32, conversation-piece lengths, row after row
        row_segments.npy       (rows+1,) int64 CSR offsets into segment_lengths
        chunks.parquet         (with --output-format parquet|both) input_ids, loss_mask, seq_lengths
        manifest.json          shapes, dtypes, sha256 of every file, the unit's counters

Every file is written under a temporary name and renamed into place; a shard folder is renamed into
place only when complete. Arrays are plain .npy (never pickled): `np.load(path, mmap_mode="r")`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from packsft.chunks import Chunks
from packsft.errors import OutputError

MARKER = ".packsft"
DATASET_JSON = "dataset.json"
MANIFEST_JSON = "manifest.json"
REJECTS_JSONL = "rejects.jsonl"
SHARDS_DIR = "shards"
ARRAY_FILES = ("tokens.npy", "loss_mask.npy", "segment_lengths.npy", "row_segments.npy")
PARQUET_FILE = "chunks.parquet"
HASH_BLOCK = 1 << 20


def shard_name(index: int) -> str:
    return f"{index:05d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); check free space and permissions") from None


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Create OUT_DIR, or clear an earlier packsft output in it when asked to overwrite.

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


def _save_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def storage_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def narrow_tokens(tokens: np.ndarray, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """Cast token ids to the storage dtype, failing loudly if any id would not round-trip."""
    if tokens.size and (tokens.min() < 0 or tokens.max() >= min(vocab_size, np.iinfo(dtype).max + 1)):
        bad = int(tokens.max()) if tokens.max() >= vocab_size else int(tokens.min())
        raise OutputError(
            f"token id {bad} does not fit {dtype} storage for a vocabulary of {vocab_size}; "
            "the tokenizer produced an id outside its vocabulary"
        )
    return tokens.astype(dtype)


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
        if output_format in ("npy", "both"):
            arrays = {
                "tokens.npy": tokens,
                "loss_mask.npy": chunks.loss_mask.astype(np.uint8),
                "segment_lengths.npy": chunks.segment_lengths.astype(np.int32),
                "row_segments.npy": chunks.row_segments.astype(np.int64),
            }
            for name, array in arrays.items():
                files[name] = _save_npy(tmp / name, array)
        if output_format in ("parquet", "both"):
            from packsft.export import write_parquet

            write_parquet(tmp / PARQUET_FILE, tokens, chunks)
            path = tmp / PARQUET_FILE
            files[PARQUET_FILE] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
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


def read_manifest(out_dir: Path, index: int) -> dict[str, Any] | None:
    path = out_dir / SHARDS_DIR / shard_name(index) / MANIFEST_JSON
    if not path.exists():
        return None
    return json.loads(path.read_text())


def read_dataset(out_dir: str | Path) -> dict[str, Any]:
    """Read OUT_DIR/dataset.json, with a clear error if the output is missing or incomplete."""
    out_dir = Path(out_dir)
    path = out_dir / DATASET_JSON
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: no such folder. Pass the OUT_DIR of a `packsft pack` run")
    if not path.exists():
        hint = "the pack did not finish; rerun it" if (out_dir / MARKER).exists() else "not a packsft output"
        raise OutputError(f"{out_dir}: no {DATASET_JSON} ({hint})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{path}: not valid JSON ({exc}); the output is corrupt, pack it again") from None
