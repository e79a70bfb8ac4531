"""The rows the writer stores are what the format says, built without copies of the whole unit.

build_chunks writes each piece's flags straight to its label positions and build_linear_chunks copies the stream
as reshaped blocks (pack/rows.py); both are checked against the format's definition, token by token:
tokens[r, i] is a row position and loss_mask[r, i] the train flag of tokens[r, i + 1] (a row's first token is no
label).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packsft.errors import OutputError
from packsft.pack.bins import pack_bestfit, slot_lengths
from packsft.pack.rows import build_chunks, build_linear_chunks
from packsft.pack.table import PieceTable
from packsft.write.writer import narrow_tokens

PAD = 7


def _stream(draw: st.DrawFn, size: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(draw(st.lists(st.integers(8, 999), min_size=size, max_size=size)), np.int32)
    flags = np.asarray(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)), np.uint8)
    return ids, flags


@st.composite
def streams(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    seq_length = draw(st.integers(1, 40))
    ids, flags = _stream(draw, draw(st.integers(0, 300)))
    starts = sorted(draw(st.sets(st.integers(1, max(len(ids) - 1, 1)), max_size=8))) if len(ids) > 1 else []
    offsets = np.asarray([0, *starts, len(ids)] if len(ids) else [0], np.int64)
    return ids, flags, offsets, seq_length


@st.composite
def placed_pieces(draw: st.DrawFn) -> tuple[PieceTable, int, int]:
    seq_length = draw(st.integers(1, 40))
    pad_multiple = draw(st.sampled_from([1, 1, 2, 4]))
    longest = seq_length + 1 if pad_multiple == 1 else (seq_length + 1) // pad_multiple * pad_multiple
    lengths = draw(st.lists(st.integers(1, max(longest, 1)), max_size=30)) if longest else []
    ids, flags = _stream(draw, sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    return PieceTable(ids, flags, offsets, np.arange(len(lengths))), seq_length, pad_multiple


@settings(max_examples=150, deadline=None)
@given(streams())
def test_linear_rows_are_the_stream_windows(stream):
    ids, flags, offsets, seq_length = stream
    chunks = build_linear_chunks(ids, flags, offsets, seq_length, PAD)
    for r in range(chunks.rows):
        window = slice(r * seq_length, r * seq_length + seq_length + 1)
        held = len(ids[window])
        assert chunks.tokens[r, :held].tolist() == ids[window].tolist()
        assert (chunks.tokens[r, held:] == PAD).all()
        assert chunks.loss_mask[r, :held - 1].tolist() == flags[window][1:].tolist()
        assert not chunks.loss_mask[r, held - 1:].any()
    assert chunks.tokens.flags.c_contiguous and chunks.loss_mask.flags.c_contiguous
    assert chunks.loss_mask.shape == (chunks.rows, seq_length)


@settings(max_examples=150, deadline=None)
@given(placed_pieces())
def test_packed_rows_hold_each_piece_and_its_labels(placed):
    pieces, seq_length, pad_multiple = placed
    slots = slot_lengths(pieces.lengths, pad_multiple)
    packing = pack_bestfit(slots, seq_length + 1, None)
    chunks = build_chunks(pieces, packing, seq_length, PAD, slots)
    expected_tokens = np.full((packing.rows, seq_length + 1), PAD, np.int32)
    expected_flags = np.zeros((packing.rows, seq_length + 1), np.uint8)
    for row in range(packing.rows):
        column = 0
        for piece in packing.order[packing.row_offsets[row]:packing.row_offsets[row + 1]].tolist():
            start, stop = pieces.offsets[piece], pieces.offsets[piece + 1]
            expected_tokens[row, column:column + stop - start] = pieces.ids[start:stop]
            expected_flags[row, column:column + stop - start] = pieces.flags[start:stop]
            column += int(slots[piece])
    assert chunks.tokens.tolist() == expected_tokens.tolist()
    assert chunks.loss_mask.tolist() == expected_flags[:, 1:].tolist()


def test_ids_stored_as_uint32_are_the_rows_own_bytes():
    tokens = np.arange(12, dtype=np.int32).reshape(3, 4) * 1000
    stored = narrow_tokens(tokens, np.dtype(np.uint32), 151_669)
    assert stored.dtype == np.uint32 and np.shares_memory(stored, tokens)  # no copy of the rows
    assert stored.tolist() == tokens.tolist()
    narrowed = narrow_tokens(tokens, np.dtype(np.uint16), 50_262)
    assert narrowed.dtype == np.uint16 and narrowed.tolist() == tokens.tolist()


def test_a_negative_id_is_refused_not_reinterpreted():
    with pytest.raises(OutputError, match="token id -1 does not fit uint32 storage for a vocabulary of 151669"):
        narrow_tokens(np.asarray([[5, -1]], np.int32), np.dtype(np.uint32), 151_669)
