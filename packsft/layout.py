"""The on-disk contract of a packed output, written once: names, dtypes, shapes, reading it back.

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

The writer, verify, the loader, export and report import these names; a change to the format is one
edit here. `PackedOutput` reads an output back with memory maps (`allow_pickle=False`, nothing copied).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packsft.errors import OutputError

FORMAT_VERSION = 1
MARKER = ".packsft"
DATASET_JSON = "dataset.json"
MANIFEST_JSON = "manifest.json"
REJECTS_JSONL = "rejects.jsonl"
SHARDS_DIR = "shards"
ARRAY_FILES = ("tokens.npy", "loss_mask.npy", "segment_lengths.npy", "row_segments.npy")
PARQUET_FILE = "chunks.parquet"
HASH_BLOCK = 1 << 20
UINT16_VOCAB = 1 << 16  # ids below this fit uint16 storage


def shard_name(index: int) -> str:
    return f"{index:05d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def storage_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= UINT16_VOCAB else np.dtype(np.uint32)


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


@dataclass(frozen=True)
class Row:
    tokens: np.ndarray  # (L+1,)
    loss_mask: np.ndarray  # (L,)
    segment_lengths: np.ndarray

    @property
    def segment_starts(self) -> np.ndarray:
        return np.cumsum(self.segment_lengths) - self.segment_lengths


class PackedOutput:
    """A complete packsft output folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.dataset: dict[str, Any] = read_dataset(self.out_dir)
        self.seq_length: int = self.dataset["seq_length"]
        self.shards = [shard["name"] for shard in self.dataset["shards"]]
        rows = [shard["rows"] for shard in self.dataset["shards"]]
        self.row_offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.row_offsets[-1])

    def array(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._arrays:
            path = self.out_dir / SHARDS_DIR / self.shards[shard] / f"{name}.npy"
            if not path.exists():
                if self.dataset.get("config", {}).get("output_format") == "parquet":
                    raise OutputError(
                        f"{self.out_dir}: written with --output-format parquet only; repack with npy or both to read it here"
                    )
                raise OutputError(f"{path}: missing; the output is incomplete (rerun the pack, or `packsft verify`)")
            try:
                self._arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise OutputError(f"{path}: not a readable .npy array ({exc}); the output is corrupt") from None
        return self._arrays[key]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row within shard) of global row `index`."""
        if not 0 <= index < len(self):
            raise OutputError(f"chunk {index} does not exist; this output has chunks 0..{len(self) - 1}")
        shard = int(np.searchsorted(self.row_offsets, index, side="right") - 1)
        return shard, index - int(self.row_offsets[shard])

    def row(self, index: int) -> Row:
        shard, local = self.locate(index)
        offsets = self.array(shard, "row_segments")
        return Row(
            tokens=np.asarray(self.array(shard, "tokens")[local]),
            loss_mask=np.asarray(self.array(shard, "loss_mask")[local]),
            segment_lengths=np.asarray(self.array(shard, "segment_lengths")[offsets[local] : offsets[local + 1]]),
        )
