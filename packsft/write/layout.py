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

With `--pad-multiple N` every stored segment length is a multiple of N (a piece and its untrained pads); with
`--max-segments K` no row holds more than K segments. dataset.json's config records both (`Topology.of`), so a
loader or an export can pad cu_seqlens to K+1 entries.

Every file is written under a temporary name and renamed into place; a shard folder is renamed into
place only when complete. Arrays are plain .npy (never pickled): `np.load(path, mmap_mode="r")`.

The writer, verify, the loader, export and report import these names; a change to the format is one
edit here. `PackedOutput` reads an output back with memory maps (`allow_pickle=False`, nothing copied).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packsft.errors import OutputError
from packsft.pack.rows import segment_starts

FORMAT_VERSION = 1
MARKER = ".packsft"
DATASET_JSON = "dataset.json"
MANIFEST_JSON = "manifest.json"
REJECTS_JSONL = "rejects.jsonl"
SHARDS_DIR = "shards"
TOKENS_NPY = "tokens.npy"
LOSS_MASK_NPY = "loss_mask.npy"
SEGMENT_LENGTHS_NPY = "segment_lengths.npy"
ROW_SEGMENTS_NPY = "row_segments.npy"
ARRAY_FILES = (TOKENS_NPY, LOSS_MASK_NPY, SEGMENT_LENGTHS_NPY, ROW_SEGMENTS_NPY)
PARQUET_FILE = "chunks.parquet"
# The files a shard holds, by --output-format.
SHARD_FILES = {"npy": ARRAY_FILES, "parquet": (PARQUET_FILE,), "both": (*ARRAY_FILES, PARQUET_FILE)}
HASH_BLOCK = 1 << 20
UINT16_VOCAB = 1 << 16  # ids below this fit uint16 storage
TOKEN_DTYPES = ("uint16", "uint32")
MASK_DTYPE = np.dtype(np.uint8)
SEGMENT_DTYPE = np.dtype(np.int32)
OFFSET_DTYPE = np.dtype(np.int64)
# What every reader of an output needs from dataset.json (verify checks the rest of it too).
READ_KEYS = ("format_version", "seq_length", "dtype", "rows", "tokenizer", "shards")
# .npy format versions np.save writes for our arrays (2.0 only for headers over 64 KiB).
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


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


def array_contract(rows: int, seq_length: int, token_dtype: np.dtype) -> dict[str, tuple[tuple[int, ...] | None, np.dtype]]:
    """Shape and dtype of each array of a shard of `rows` rows; shape None is 1-D of any length."""
    return {
        TOKENS_NPY: ((rows, seq_length + 1), token_dtype),
        LOSS_MASK_NPY: ((rows, seq_length), MASK_DTYPE),
        SEGMENT_LENGTHS_NPY: (None, SEGMENT_DTYPE),
        ROW_SEGMENTS_NPY: ((rows + 1,), OFFSET_DTYPE),
    }


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy header says: shape, dtype, order, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def end(self) -> int:
        """The file size the header implies (data offset + data bytes)."""
        return self.offset + math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(path: Path) -> NpyHeader:
    """Read the header of a .npy file without touching its data (an object dtype is read, never unpickled).

    Raises ValueError with numpy's reason when the file is not a .npy array of a version packsft writes.
    """
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f".npy format version {version[0]}.{version[1]}; packsft writes 1.0 and 2.0")
            shape, fortran_order, dtype = _NPY_HEADER_READERS[version](handle)
        except ValueError:
            raise
        except Exception as exc:  # a damaged header also raises SyntaxError, TokenError, ...
            raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        return NpyHeader(tuple(shape), dtype, bool(fortran_order), handle.tell())


def contract_problems(header: NpyHeader, shape: tuple[int, ...] | None, dtype: np.dtype) -> list[str]:
    """How a .npy header departs from the contract (shape None: any 1-D); empty when it keeps it."""
    if header.dtype.hasobject:
        return ["holds pickled Python objects: refused, never unpickled"]
    found = []
    if header.dtype != dtype:
        found.append(f"dtype is {header.dtype}, the format stores {dtype}")
    if (shape is not None and header.shape != shape) or (shape is None and len(header.shape) != 1):
        found.append(f"shape is {list(header.shape)}, expected {list(shape) if shape else '1-D'}")
    if len(header.shape) > 1 and header.fortran_order:
        found.append("stored in Fortran order; the format stores rows contiguously")
    return found


@dataclass(frozen=True)
class Topology:
    """What a parallel layout asks of the rows: segments of a multiple of `pad_multiple` positions, at most
    `max_segments` of them a row (None: no limit)."""

    pad_multiple: int = 1
    max_segments: int | None = None

    @staticmethod
    def of(dataset: dict[str, Any]) -> Topology:
        """The topology an output was packed for (outputs from before the keys existed: none)."""
        config = dataset.get("config", {})
        return Topology(config.get("pad_multiple") or 1, config.get("max_segments"))

    def cu_seqlens_width(self) -> int | None:
        """Entries of a row's fixed-width cu_seqlens (its K segments' boundaries), or None without a limit."""
        return None if self.max_segments is None else self.max_segments + 1


NO_TOPOLOGY = Topology()  # rows as packsft packs them without --pad-multiple and --max-segments


def check_dataset(dataset: Any, path: Path) -> None:
    """Refuse a dataset.json that lacks what readers need, or is of another format version."""
    missing = [key for key in READ_KEYS if not isinstance(dataset, dict) or key not in dataset]
    if missing:
        raise OutputError(f"{path}: lacks {', '.join(missing)}; the output is incomplete, pack it again")
    if dataset["format_version"] != FORMAT_VERSION:
        raise OutputError(f"{path}: format version {dataset['format_version']}, this packsft reads "
                          f"{FORMAT_VERSION}; pack the data again with this packsft")


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
        return segment_starts(self.segment_lengths, np.array([0, len(self.segment_lengths)]))


class PackedOutput:
    """A complete packsft output folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.dataset: dict[str, Any] = read_dataset(self.out_dir)
        check_dataset(self.dataset, self.out_dir / DATASET_JSON)
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
            self._arrays[key] = self._open(path, shard)
        return self._arrays[key]

    def _open(self, path: Path, shard: int) -> np.ndarray:
        """Memory-map one array once its header keeps the contract (a damaged file is named, not misread)."""
        rows = self.dataset["shards"][shard]["rows"]
        shape, dtype = array_contract(rows, self.seq_length, np.dtype(self.dataset["dtype"]))[path.name]
        try:
            found = contract_problems(read_npy_header(path), shape, dtype)
            if not found:
                return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            found = [f"not a readable .npy array ({exc})"]
        raise OutputError(f"{path}: {found[0]}; the output is corrupt (pack it again, or `packsft verify`)")

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
