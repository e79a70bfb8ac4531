"""Parquet export: one row per chunk, readable by `datasets.load_dataset("parquet", ...)` and TRL.

Columns:
- `input_ids`: the L+1 stored tokens (inputs are [:-1], labels [1:]);
- `loss_mask`: L flags aligned to the labels;
- `seq_lengths`: the lengths of the conversation pieces in the row (the column name TRL's padding-free
  collator uses), followed by the length of the trailing padding when there is any, so that the
  lengths always sum to L+1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from packsft.chunks import Chunks


def seq_lengths(chunks: Chunks, capacity: int) -> pa.ListArray:
    counts = np.diff(chunks.row_segments)
    used = np.add.reduceat(chunks.segment_lengths.astype(np.int64), chunks.row_segments[:-1]) if len(chunks.segment_lengths) else np.zeros(chunks.rows, np.int64)
    used = np.where(counts > 0, used, 0)
    pad = capacity - used
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


def write_parquet(path: Path, tokens: np.ndarray, chunks: Chunks) -> None:
    table = pa.table(
        {
            "input_ids": _fixed_lists(tokens),
            "loss_mask": _fixed_lists(chunks.loss_mask),
            "seq_lengths": seq_lengths(chunks, tokens.shape[1]),
        }
    )
    pq.write_table(table, path, compression="zstd")
