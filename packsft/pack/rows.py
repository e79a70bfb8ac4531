"""Materialise chunks: the (rows, L+1) token array, its label-aligned loss mask and segment boundaries.

    tokens[r]    = t0 t1 t2 ... tL          inputs = tokens[r, :-1], labels = tokens[r, 1:]
    loss_mask[r] =    m1 m2 ... mL          loss_mask[r, i] = train flag of tokens[r, i+1]
    segments     = lengths of the conversation pieces in row r, in order; sum <= L+1, pads after

Segments are stored CSR: the segment lengths of row r are
`segment_lengths[row_segments[r]:row_segments[r+1]]`. A trainer resets position_ids at each segment
start and builds cu_seqlens from them; the label at a segment start is never trained.

With `--pad-multiple N` a segment is its piece and then pads (pad id, mask 0) up to a multiple of N, and its
stored length includes them: the pads come after the piece's tokens, so causal attention within the segment never
lets a piece token see them, and cu_seqlens keep every boundary at a multiple of N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.pack.bins import Packing, linear_rows
from packsft.pack.table import PieceTable
from packsft.render.tokenizer import TOKEN_ID_DTYPE


@dataclass
class Chunks:
    tokens: np.ndarray  # (rows, L+1) in the pieces' dtype (TOKEN_ID_DTYPE); narrowed to storage by the writer
    loss_mask: np.ndarray  # uint8 (rows, L)
    segment_lengths: np.ndarray  # int32
    row_segments: np.ndarray  # int64, len rows+1
    piece_rows: np.ndarray  # int64, row of every placed piece, in packing order (stats only)

    @property
    def rows(self) -> int:
        return len(self.tokens)

    @property
    def nonpad(self) -> int:
        return int(self.segment_lengths.sum())


def build_chunks(pieces: PieceTable, packing: Packing, seq_length: int, pad_id: int,
                 slots: np.ndarray | None = None) -> Chunks:
    """Copy the pieces into rows as the packing says; the rest of each row is pad (mask 0).

    `slots` (bins.slot_lengths, by piece) are the positions each piece's segment takes, its length and its pads;
    None: its length. One slice copy per piece: a few thousand per unit, far cheaper than gathering token by token.
    """
    capacity = seq_length + 1
    rows = packing.rows
    lengths = pieces.lengths[packing.order]
    segments = lengths if slots is None else np.asarray(slots, np.int64)[packing.order]
    pieces_per_row = np.diff(packing.row_offsets)
    piece_rows = np.repeat(np.arange(rows, dtype=np.int64), pieces_per_row)
    # Column where each placed piece starts: running length of the segments before it within its row.
    run = np.cumsum(segments) - segments
    row_base = np.repeat(run[packing.row_offsets[:-1]] if rows else np.zeros(0, np.int64), pieces_per_row)
    columns = run - row_base
    tokens = np.full((rows, capacity), pad_id, pieces.ids.dtype)
    # Flags go straight to their label positions (one to the left; a row's first token is no label): no
    # (rows, L+1) flag array beside its copy, 1 byte a position at the peak instead of 2.
    loss_mask = np.zeros((rows, seq_length), np.uint8)
    starts = pieces.offsets[packing.order]
    for row, column, start, length in zip(piece_rows.tolist(), columns.tolist(), starts.tolist(), lengths.tolist()):
        tokens[row, column : column + length] = pieces.ids[start : start + length]
        first = 1 if column == 0 else 0
        loss_mask[row, column + first - 1 : column + length - 1] = pieces.flags[start + first : start + length]
    return Chunks(
        tokens=tokens,
        loss_mask=loss_mask,
        segment_lengths=segments.astype(np.int32),
        row_segments=packing.row_offsets.astype(np.int64),
        piece_rows=piece_rows,
    )


def build_linear_chunks(
    ids: np.ndarray, flags: np.ndarray, conv_offsets: np.ndarray, seq_length: int, pad_id: int
) -> Chunks:
    """Stream packing: row k holds stream[k*L : k*L+L+1]; only the last row is padded."""
    capacity = seq_length + 1
    total = len(ids)
    rows = linear_rows(total, seq_length)
    body = rows * seq_length  # row r's first L tokens are stream[r*L : r*L+L]; its last is stream[r*L+L]
    # Copied as reshaped blocks, without an int64 index per position (8 bytes) and a gather through it.
    tokens = np.full((rows, capacity), pad_id, ids.dtype)
    loss_mask = np.zeros((rows, seq_length), np.uint8)  # loss_mask[r, i] = flag of stream[r*L + i + 1]
    if rows:
        stream_ids = np.full(body + 1, pad_id, ids.dtype)
        stream_ids[:min(total, body + 1)] = ids[:body + 1]
        tokens[:, :seq_length] = stream_ids[:body].reshape(rows, seq_length)
        tokens[:, seq_length] = stream_ids[seq_length::seq_length]
        del stream_ids
        stream_flags = np.zeros(body + 1, np.uint8)
        stream_flags[:min(total, body + 1)] = flags[:body + 1]
        loss_mask[:] = stream_flags[1:].reshape(rows, seq_length)

    # Segments: a row is cut at every conversation start inside it (its first segment may be the
    # middle of a conversation) and ends where the stream ends.
    row_starts = np.arange(rows, dtype=np.int64) * seq_length
    row_ends = np.minimum(row_starts + capacity, total)
    starts = conv_offsets[:-1]
    cut_lists, counts = [], []
    first = np.searchsorted(starts, row_starts, side="right")
    last = np.searchsorted(starts, row_ends, side="left")
    for r in range(rows):
        inner = starts[first[r] : last[r]]
        bounds = np.concatenate([[row_starts[r]], inner, [row_ends[r]]])
        cut_lists.append(np.diff(bounds))
        counts.append(len(bounds) - 1)
    segment_lengths = np.concatenate(cut_lists).astype(np.int32) if cut_lists else np.zeros(0, np.int32)
    return Chunks(
        tokens=tokens,
        loss_mask=loss_mask,
        segment_lengths=segment_lengths,
        row_segments=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        piece_rows=np.zeros(0, np.int64),
    )


def labels_with_bos_and_user(chunks: Chunks, bos_id: int | None, user_id: int | None) -> int | None:
    """Trained labels that have a BOS and a user role token before them in their own segment.

    Per segment: find its first BOS and first user token (there are few of these, so only their
    positions are searched), then count the trained labels after both with a cumulative sum.
    """
    if bos_id is None or user_id is None or not chunks.rows:
        return None
    capacity = chunks.tokens.shape[1]
    flat = chunks.tokens.reshape(-1)
    counts = np.diff(chunks.row_segments)
    seg_rows = np.repeat(np.arange(chunks.rows, dtype=np.int64), counts)
    seg_start = seg_rows * capacity + segment_starts(chunks.segment_lengths, chunks.row_segments)
    seg_end = seg_start + chunks.segment_lengths
    if not len(seg_start):
        return 0

    def first_in_segment(token_id: int) -> np.ndarray:
        """Position of the first `token_id` in each segment, or the segment end when it has none."""
        at = np.flatnonzero(flat == token_id)
        segment = np.searchsorted(seg_start, at, side="right") - 1
        inside = (segment >= 0) & (at < seg_end[np.maximum(segment, 0)])
        first = seg_end.copy()
        np.minimum.at(first, segment[inside], at[inside])
        return first

    # Label tokens[r, j] (j >= 1) sees tokens[r, :j]: it counts when both markers sit before j.
    after = np.maximum(first_in_segment(bos_id), first_in_segment(user_id)) + 1
    # before[r, j] counts the trained labels of tokens[r, 1..j]; a segment lies within one row, so the labels
    # of its positions [a, e) are before[e - 1] - before[a - 1] in the flat view (4 bytes a position).
    before = np.zeros((chunks.rows, capacity), np.int32)
    np.cumsum(chunks.loss_mask, axis=1, dtype=np.int32, out=before[:, 1:])
    flat_before = before.reshape(-1)
    after = np.minimum(after, seg_end)
    return int((flat_before[seg_end - 1] - flat_before[after - 1]).sum(dtype=np.int64))


def empty_chunks(seq_length: int) -> Chunks:
    """No rows (a unit whose input was skipped, or that held nothing to train)."""
    return Chunks(
        tokens=np.zeros((0, seq_length + 1), TOKEN_ID_DTYPE),
        loss_mask=np.zeros((0, seq_length), np.uint8),
        segment_lengths=np.zeros(0, np.int32),
        row_segments=np.zeros(1, np.int64),
        piece_rows=np.zeros(0, np.int64),
    )


def segment_starts(segment_lengths: np.ndarray, row_segments: np.ndarray) -> np.ndarray:
    """Start column of every segment in its row: the running length of the row's earlier segments."""
    running = np.cumsum(segment_lengths, dtype=np.int64) - segment_lengths
    if not len(running):
        return running
    return running - np.repeat(running[row_segments[:-1]], np.diff(row_segments))


def row_lengths(segment_lengths: np.ndarray, row_segments: np.ndarray) -> np.ndarray:
    """Positions each row's segments fill (the rest of its L+1 positions is padding)."""
    running = np.concatenate([[0], np.cumsum(segment_lengths, dtype=np.int64)])
    return running[row_segments[1:]] - running[row_segments[:-1]]
