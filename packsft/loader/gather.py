"""Row access for the loader, without torch: checked arrays, pread gathers, orders and segments.

A packed output is read as one virtual array of rows over its shards (nothing is copied):

    global row   0 ........ 4999 | 5000 ........ 9999 | 10000 ...
    shard        00000            | 00001             | 00002
    tokens.npy   [header][row 0: (L+1) x uint16][row 1] ...   row r at data_offset + r * (L+1) * 2

Rows are gathered with `os.preadv` straight into the caller's buffer at the .npy data offset, never
through a memory map: a memmap read at random over a whole epoch leaves every touched page mapped in
the process, so resident memory creeps up to the size of the data; pread leaves them in the page
cache only, where the kernel can drop them. Reads within a batch go in row order (the page cache and
read-ahead like that); each row lands at its own position in the batch.

Orders are drawn from PCG64's raw 64-bit stream (specified by the algorithm, so identical on every
machine and numpy version) seeded with (seed, stream, index), and turned into a permutation by a
stable argsort. The costs are O(n log n) once per epoch and O(batch) syscalls per batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packsft.errors import OutputError
from packsft.pack.rows import segment_starts
from packsft.write.layout import (
    DATASET_JSON,
    MANIFEST_JSON,
    ROW_SEGMENTS_NPY,
    SEGMENT_LENGTHS_NPY,
    SHARDS_DIR,
    PackedOutput,
    array_contract,
    contract_problems,
    read_npy_header,
)

# Stream ids keep the row orders of different uses of one seed independent of each other.
EPOCH_STREAM = 0
MIXTURE_STREAM = 1
DATASET_STREAM = 2  # + the dataset's index in a mixture
UNIT_SCALE = 2.0**-53


@dataclass(frozen=True)
class NpyFile:
    """Where a checked .npy array's data lives: path, byte offset of row 0, shape, dtype."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def read_all(self) -> np.ndarray:
        return np.fromfile(self.path, dtype=self.dtype, offset=self.offset).reshape(self.shape)


def open_npy(path: Path, shape: tuple[int, ...] | None, dtype: np.dtype, declared: dict[str, Any] | None) -> NpyFile:
    """Check one .npy file against the contract (shape None: 1-D) and what dataset.json declares."""
    if declared is None:
        raise OutputError(f"{path}: not listed in dataset.json; the output was packed without .npy arrays "
                          "(--output-format parquet) or is corrupt. Pack it again with --output-format npy")
    if not path.exists():
        raise OutputError(f"{path}: missing; the output is incomplete (pack it again, or `packsft verify`)")
    want = list(shape) if shape is not None else declared.get("shape")
    if not isinstance(want, list) or len(want) != len(shape or (0,)) or declared.get("shape") != want \
            or declared.get("dtype") != str(dtype):
        raise OutputError(f"{path}: dataset.json declares shape {declared.get('shape')} {declared.get('dtype')}, "
                          f"but the shard's row count needs {want} {dtype}; the output is corrupt, pack it again")
    try:
        header = read_npy_header(path)
    except ValueError as exc:
        raise OutputError(f"{path}: not a readable .npy array ({exc}); the output is corrupt, pack it again") from None
    if contract_problems(header, tuple(want), dtype):
        raise OutputError(f"{path}: holds shape {list(header.shape)} {header.dtype}, expected {want} {dtype} "
                          "as dataset.json declares; the output is corrupt, pack it again")
    size = path.stat().st_size
    if size != header.end:
        raise OutputError(f"{path}: {size} bytes, expected {header.end} for shape {want} {dtype} "
                          "(truncated or overwritten); the output is corrupt, pack it again")
    return NpyFile(path, header.offset, header.shape, dtype)


def open_shards(output: PackedOutput) -> list[dict[str, NpyFile]]:
    """Every shard's arrays by name, checked against dataset.json (PackedOutput checked its keys and version)."""
    dataset, where = output.dataset, output.out_dir / DATASET_JSON
    if sum(shard["rows"] for shard in dataset["shards"]) != dataset["rows"]:
        raise OutputError(f"{where}: the shards' rows do not add up to rows = {dataset['rows']}; the output is corrupt")
    fingerprint = dataset["tokenizer"].get("fingerprint")
    shards = []
    for shard in dataset["shards"]:
        folder = output.out_dir / SHARDS_DIR / shard["name"]
        if not (folder / MANIFEST_JSON).exists():
            raise OutputError(f"{folder}: shard missing (dataset.json lists it); the output is incomplete or was "
                              "moved in parts. Copy the whole OUT_DIR, or pack it again")
        manifest = json.loads((folder / MANIFEST_JSON).read_text())
        if manifest.get("rows") != shard["rows"] or manifest.get("tokenizer_fingerprint") != fingerprint:
            raise OutputError(f"{folder}/{MANIFEST_JSON}: rows or tokenizer differ from dataset.json; the shard "
                              "comes from another pack run. Pack the output again")
        shards.append(_open_shard(folder, shard, dataset["seq_length"], np.dtype(dataset["dtype"])))
    return shards


def _open_shard(folder: Path, shard: dict[str, Any], seq_length: int, token_dtype: np.dtype) -> dict[str, NpyFile]:
    """A shard's checked arrays by name without .npy; row_segments must end where segment_lengths does."""
    files = shard.get("files", {})
    contract = array_contract(shard["rows"], seq_length, token_dtype)
    arrays = {name.removesuffix(".npy"): open_npy(folder / name, shape, dtype, files.get(name))
              for name, (shape, dtype) in contract.items()}
    offsets = arrays["row_segments"]
    stored = np.fromfile(offsets.path, dtype=offsets.dtype, count=1, offset=offsets.offset + shard["rows"] * offsets.dtype.itemsize)
    if int(stored[0]) != arrays["segment_lengths"].shape[0]:
        raise OutputError(f"{folder}: {ROW_SEGMENTS_NPY} ends at {int(stored[0])} but {SEGMENT_LENGTHS_NPY} holds "
                          f"{arrays['segment_lengths'].shape[0]} pieces; the output is corrupt, pack it again")
    return arrays


def output_fingerprint(dataset: dict[str, Any]) -> str:
    """Identity of the packed data (row length, dtype, tokenizer, every shard file's sha256)."""
    identity = [dataset["seq_length"], dataset["dtype"], dataset["tokenizer"].get("fingerprint"),
                [[shard["name"], shard["rows"], {name: f.get("sha256") for name, f in sorted(shard["files"].items())}]
                 for shard in dataset["shards"]]]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def raw_stream(seed: int, stream: int, index: int, count: int) -> np.ndarray:
    """`count` raw uint64 draws of PCG64 seeded with (seed, stream, index): the same everywhere."""
    return np.random.PCG64([seed, stream, index]).random_raw(count)


def epoch_order(rows: int, seed: int, epoch: int, shuffle: bool = True, stream: int = EPOCH_STREAM) -> np.ndarray:
    """The order in which an epoch visits `rows` rows: a seeded permutation, or 0..rows-1."""
    if not shuffle:
        return np.arange(rows, dtype=np.int64)
    return np.argsort(raw_stream(seed, stream, epoch, rows), kind="stable").astype(np.int64)


def uniform_stream(seed: int, stream: int, index: int, count: int) -> np.ndarray:
    """`count` uniforms in [0, 1) from the top 53 bits of the raw stream."""
    return (raw_stream(seed, stream, index, count) >> np.uint64(11)).astype(np.float64) * UNIT_SCALE


def batch_segments(bounds: np.ndarray, rows: int, seq_length: int) -> np.ndarray:
    """cu_seqlens (int32) over a flattened batch of `rows` input rows of `seq_length` tokens.

    `bounds` are the batch positions where stored pieces end (RowReader.piece_bounds). The row
    starts and ends are added, so the padding after a row's last piece is a segment of its own and
    the segments tile the batch; empty segments vanish.
    """
    edges = np.arange(rows + 1, dtype=np.int64) * seq_length
    return np.unique(np.concatenate([bounds.astype(np.int64), edges])).astype(np.int32)


class RowReader:
    """Reads rows of one checked output into caller-owned buffers with pread. Thread-safe."""

    def __init__(self, output: PackedOutput, shards: list[dict[str, NpyFile]]) -> None:
        self.output, self.shards = output, shards
        self._fds: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()
        self._pieces: tuple[np.ndarray, np.ndarray] | None = None
        self._data_offsets = {name: np.array([arrays[name].offset for arrays in shards], dtype=np.int64)
                              for name in ("tokens", "loss_mask")}

    def _fd(self, shard: int, name: str) -> int:
        key = (shard, name)
        with self._lock:  # the loader's thread and the main thread may both open files
            if key not in self._fds:
                self._fds[key] = os.open(self.shards[shard][name].path, os.O_RDONLY)
            return self._fds[key]

    def read(self, rows: np.ndarray, tokens: np.ndarray, loss_mask: np.ndarray, at: np.ndarray | None = None) -> None:
        """Fill tokens[at[k]] and loss_mask[at[k]] with global row rows[k] (at defaults to 0..n-1).

        The buffers must be C-contiguous with rows of L+1 and L elements in the stored dtypes.
        """
        at = np.arange(len(rows)) if at is None else at
        shard_of = np.searchsorted(self.output.row_offsets, rows, side="right") - 1
        local = rows - self.output.row_offsets[shard_of]
        order = np.argsort(rows, kind="stable")
        # Plain ints and lists up front: the loop below is the loader's whole per-row cost.
        for name, out in (("tokens", tokens), ("loss_mask", loss_mask)):
            row_bytes = self.shards[0][name].row_bytes
            fds = {shard: self._fd(shard, name) for shard in np.unique(shard_of).tolist()}
            offsets = self._data_offsets[name][shard_of] + local * row_bytes
            for shard, offset, i in zip(shard_of[order].tolist(), offsets[order].tolist(), at[order].tolist()):
                if os.preadv(fds[shard], [out[i]], offset) != row_bytes:
                    path = self.shards[shard][name].path
                    raise OutputError(f"{path}: short read at byte {offset}; the file changed while reading")

    def piece_bounds(self, rows: np.ndarray, at: np.ndarray, seq_length: int) -> np.ndarray:
        """Where the stored pieces of global rows rows[k] end, as positions at[k] * L + end in a batch.

        A piece's end is cut to the row's L inputs (the last token of a row is only a label).
        """
        offsets, ends = self.piece_table()
        first, counts = offsets[rows], offsets[rows + 1] - offsets[rows]
        index = np.arange(counts.sum()) + np.repeat(first - (np.cumsum(counts) - counts), counts)
        return np.repeat(at, counts) * seq_length + np.minimum(ends[index], seq_length)

    def piece_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(global row -> first piece offsets, end of each piece within its row) over all shards.

        Built once from the small segment arrays (8 bytes a row plus 4 a piece), so that
        segments cost a few vectorised operations per batch however many shards there are.
        """
        with self._lock:
            if self._pieces is None:
                offsets, ends = [np.zeros(1, dtype=np.int64)], []
                for arrays in self.shards:
                    row_segments, lengths = arrays["row_segments"].read_all(), arrays["segment_lengths"].read_all()
                    ends.append((segment_starts(lengths, row_segments) + lengths).astype(np.int32))
                    offsets.append(row_segments[1:] + offsets[-1][-1])
                self._pieces = (np.concatenate(offsets), np.concatenate(ends))
            return self._pieces

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict[str, Any]:
        # File descriptors do not survive pickling (DataLoader workers); each process opens its own.
        return {**self.__dict__, "_fds": {}, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())
