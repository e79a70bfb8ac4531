"""The invariants every shard's arrays satisfy, as pure checks on arrays (no I/O): `packsft verify` runs them.

    tokens[r]        = BOS ..seg 1.. BOS ..seg 2.. PAD PAD PAD        (L+1 ids, each < vocab_size)
    loss_mask[r]     =     m  m  m    0  m  m  m    0   0   0         (L flags, 0 or 1)
    segment_lengths  = |<--- s1 --->|<---- s2 --->|                   (each >= 1, sum <= L+1)
    row_segments     = CSR offsets: 0 .. len(segment_lengths), non-decreasing

- every row holds at least one segment; positions after its segments hold the pad id, never trained;
- aligned/bestfit: every segment starts with BOS (when the tokenizer has one), and the label at a
  segment start (the flag of its first token) is never trained, so no label crosses two conversations;
- linear: every row but the last is full, and consecutive rows share their boundary token.

Rows are read in blocks, so memory stays bounded on memory-mapped shards of any size. One systematic
fault must not print a million lines: each kind of violation names its first rows and counts the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.layout import (
    LOSS_MASK_NPY,
    ROW_SEGMENTS_NPY,
    SEGMENT_LENGTHS_NPY,
    TOKENS_NPY,
    row_lengths,
    segment_starts,
)

BLOCK_ROWS = 4096
ROWS_REPORTED = 3  # per kind of violation


@dataclass(frozen=True)
class Violation:
    array: str  # the file that holds the offending values, e.g. LOSS_MASK_NPY
    row: int | None  # row within the shard, None for a whole-array fact
    message: str


def _rows(array: str, bad_rows: np.ndarray, message: str) -> list[Violation]:
    """One violation per offending row (the first few), then one that counts the rest."""
    bad_rows = np.unique(bad_rows)
    out = [Violation(array, int(r), message) for r in bad_rows[:ROWS_REPORTED]]
    if len(bad_rows) > ROWS_REPORTED:
        out.append(Violation(array, None, f"{message}: {len(bad_rows) - ROWS_REPORTED} more rows like this"))
    return out


def check_offsets(segment_lengths: np.ndarray, row_segments: np.ndarray, rows: int) -> list[Violation]:
    """The CSR structure: offsets start at 0, end at len(segment_lengths), never decrease."""
    found = []
    if len(row_segments) != rows + 1:
        found.append(Violation(ROW_SEGMENTS_NPY, None, f"holds {len(row_segments)} offsets for {rows} rows (expected {rows + 1})"))
        return found
    if row_segments[0] != 0:
        found.append(Violation(ROW_SEGMENTS_NPY, None, f"starts at {int(row_segments[0])}, not 0"))
    if row_segments[-1] != len(segment_lengths):
        found.append(Violation(ROW_SEGMENTS_NPY, None,
                               f"ends at {int(row_segments[-1])}, but segment_lengths holds {len(segment_lengths)} segments"))
    decreasing = np.flatnonzero(np.diff(row_segments) < 0)
    found += _rows(ROW_SEGMENTS_NPY, decreasing, "offsets decrease (row_segments must be non-decreasing)")
    return found


def row_usage(segment_lengths: np.ndarray, row_segments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions used per row, row of every segment, start column of every segment); offsets must be valid."""
    seg_rows = np.repeat(np.arange(len(row_segments) - 1, dtype=np.int64), np.diff(row_segments))
    return row_lengths(segment_lengths, row_segments), seg_rows, segment_starts(segment_lengths, row_segments)


def check_shard_arrays(
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    segment_lengths: np.ndarray | None,
    row_segments: np.ndarray | None,
    *,
    vocab_size: int,
    pad_id: int,
    bos_id: int | None,
    strategy: str,
) -> list[Violation]:
    """Every invariant of one shard's arrays; shapes and dtypes must already match the contract.

    Without segments (a parquet-only output) only the per-token checks run.
    """
    rows, capacity = tokens.shape
    found: list[Violation] = []
    segments_ok = segment_lengths is not None and row_segments is not None
    if segments_ok:
        segment_lengths, row_segments = np.asarray(segment_lengths), np.asarray(row_segments)
        found = check_offsets(segment_lengths, row_segments, rows)
        segments_ok = not found
    if segments_ok:
        short = np.flatnonzero(segment_lengths < 1)
        seg_row_of = np.searchsorted(row_segments, short, side="right") - 1
        found += _rows(SEGMENT_LENGTHS_NPY, seg_row_of, "a segment has length < 1")
        used, seg_rows, starts = row_usage(segment_lengths, row_segments)
        found += _rows(SEGMENT_LENGTHS_NPY, np.flatnonzero(used > capacity),
                       f"segments add up to more than the row's {capacity} positions")
        found += _rows(ROW_SEGMENTS_NPY, np.flatnonzero(np.diff(row_segments) == 0), "row holds no segment")
        segments_ok = not found
    bos_rows = strategy in ("aligned", "bestfit") and bos_id is not None

    for begin in range(0, rows, BLOCK_ROWS):
        end = min(begin + BLOCK_ROWS, rows)
        block = np.asarray(tokens[begin:end])
        mask = np.asarray(loss_mask[begin:end])
        found += _rows(TOKENS_NPY, begin + np.flatnonzero((block >= vocab_size).any(axis=1)),
                       f"token id >= vocabulary size {vocab_size}")
        found += _rows(LOSS_MASK_NPY, begin + np.flatnonzero((mask > 1).any(axis=1)), "loss_mask value other than 0 or 1")
        if bos_rows:
            found += _rows(TOKENS_NPY, begin + np.flatnonzero(block[:, 0] != bos_id), f"row does not start with BOS (id {bos_id})")
        if segments_ok:
            pad = np.arange(capacity)[None, :] >= used[begin:end, None]
            found += _rows(TOKENS_NPY, begin + np.flatnonzero((pad & (block != pad_id)).any(axis=1)),
                           f"position after the row's segments does not hold the pad id {pad_id}")
            found += _rows(LOSS_MASK_NPY, begin + np.flatnonzero((pad[:, 1:] & (mask != 0)).any(axis=1)),
                           "a pad position is trained")

    if segments_ok and len(starts):
        inner = starts >= 1  # segments at column 0 are the row starts, checked above
        if bos_rows:
            found += _rows(TOKENS_NPY, seg_rows[inner][np.asarray(tokens[seg_rows[inner], starts[inner]]) != bos_id],
                           f"a segment does not start with BOS (id {bos_id})")
        if strategy in ("aligned", "bestfit"):
            trained = np.asarray(loss_mask[seg_rows[inner], starts[inner] - 1]) != 0
            found += _rows(LOSS_MASK_NPY, seg_rows[inner][trained], "the label at a segment start is trained")
    if segments_ok and strategy == "linear" and rows > 1:
        found += _rows(SEGMENT_LENGTHS_NPY, np.flatnonzero(used[:-1] != capacity),
                       "a linear row other than the last is not full")
        shared = np.asarray(tokens[1:, 0]) == np.asarray(tokens[:-1, -1])
        found += _rows(TOKENS_NPY, 1 + np.flatnonzero(~shared), "a linear row does not start with the previous row's last token")
    return found
