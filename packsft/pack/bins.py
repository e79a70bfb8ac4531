"""Packing: assign pieces (conversations or their parts) to rows of L+1 tokens. Pure: lengths in, rows out.

    row 0: [BOS conv 3 ............][BOS conv 7 .....][BOS conv 1 ..][pad pad]
    row 1: [BOS conv 0 ....................................][BOS conv 5 ...]
            `- every piece starts with BOS; pads (mask 0) only at the end of a row

- `pack_aligned`  (the seed notebook's): in input order, append while the piece fits, else pad and start a new
  row. O(n). Wastes the tail of every row the next piece does not fit (fill 85.78% on ShareGPT at
  L=2048, BENCHMARKS.md).
- `pack_bestfit`: best-fit decreasing over the whole unit: longest piece first, each into the row
  whose remaining room is the smallest that still fits it. O(n log L) with a segment tree over
  remaining capacities (`segment_tree.py`). Fill 97.96% on ShareGPT at L=2048 with the default split
  (whole turns), 99.48% with --turn-cut 64 (BENCHMARKS.md).
- linear stream packing needs no assignment: see `linear_rows`.

A packing is CSR: the pieces of row r are `order[row_offsets[r]:row_offsets[r+1]]`, in row order.

Topology-aware rows (`--pad-multiple N`, `--max-segments K`): both packers place each piece in a slot of its
length rounded up to a multiple of N (`slot_lengths`; the pads are untrained and belong to the piece's segment,
so cu_seqlens boundaries stay multiples of N), and open a new row when a row holds K pieces:

    N=4:   [BOS conv 3 ... p p][BOS conv 7 ....... p][BOS conv 1 .... ][pad pad pad pad]
            `-- 12 = 3*4 ----'  `------ 8 --------'   `-- 8 ----------'  row padding, also a multiple of 4 (N | L)

Rounding wastes less than N tokens a piece; a full row with K pieces wastes its rest (best-fit then fills the
rows that still have room and segments to spare).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.pack.segment_tree import LengthTree


@dataclass(frozen=True)
class Packing:
    order: np.ndarray  # int64 piece indices, grouped by row
    row_offsets: np.ndarray  # int64, len rows+1

    @property
    def rows(self) -> int:
        return len(self.row_offsets) - 1


def _check(lengths: np.ndarray, capacity: int) -> np.ndarray:
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"piece lengths must be in 1..{capacity}; split or truncate pieces first")
    return lengths


def slot_lengths(lengths: np.ndarray, pad_multiple: int) -> np.ndarray:
    """Positions each piece takes in its row: its length rounded up to a multiple of `pad_multiple`."""
    lengths = np.asarray(lengths, np.int64)
    return lengths if pad_multiple == 1 else -(-lengths // pad_multiple) * pad_multiple


def pack_aligned(lengths: np.ndarray, capacity: int, max_segments: int | None = None) -> Packing:
    """The seed notebook's greedy packer: pieces in input order; a new row when the next one does not fit (or the
    row holds `max_segments` pieces)."""
    lengths = _check(lengths, capacity)
    starts = [0]
    used = pieces = 0
    for index, length in enumerate(lengths.tolist()):
        if used + length > capacity or pieces == max_segments:
            starts.append(index)
            used = pieces = 0
        used += length
        pieces += 1
    if not len(lengths):
        starts = []
    return Packing(np.arange(len(lengths), dtype=np.int64), np.asarray(starts + [len(lengths)], np.int64))


def pack_bestfit(lengths: np.ndarray, capacity: int, max_segments: int | None = None) -> Packing:
    """Best-fit decreasing. Deterministic: ties in length keep input order; rows are numbered as opened.

    A row that holds `max_segments` pieces leaves the best-fit index, as a full row does.
    """
    lengths = _check(lengths, capacity)
    order = np.argsort(-lengths, kind="stable")
    best_fit = LengthTree(capacity)  # the best-fit index: the remaining rooms of the open rows
    rows_with_room: dict[int, list[int]] = {}
    row_of = np.empty(len(lengths), np.int64)
    room: list[int] = []
    pieces: list[int] = []
    for index, length in zip(order.tolist(), lengths[order].tolist()):
        cap = best_fit.smallest_at_least(length)
        if cap is None:
            row = len(room)
            room.append(capacity)
            pieces.append(0)
            cap = capacity
        else:
            row = rows_with_room[cap].pop()
            best_fit.add(cap, -1)
        left = cap - length
        room[row] = left
        row_of[index] = row
        pieces[row] += 1
        if left and pieces[row] != max_segments:
            rows_with_room.setdefault(left, []).append(row)
            best_fit.add(left, 1)
    # Within a row, pieces in placement order (longest first); rows in the order they were opened.
    placed = order[np.argsort(row_of[order], kind="stable")]
    row_offsets = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=len(room)))]).astype(np.int64)
    return Packing(placed.astype(np.int64), row_offsets)


def linear_rows(total_tokens: int, seq_length: int) -> int:
    """Rows needed to stream `total_tokens` where consecutive rows share their boundary token.

    Row k holds stream[k*L : k*L + L + 1], so every token after the first is a label exactly once.
    (The seed notebook cut the stream into disjoint blocks of L+1 and so lost one label per chunk.)
    """
    if total_tokens <= 1:
        return 0
    return -(-(total_tokens - 1) // seq_length)
