"""The invariants every shard's arrays satisfy, as pure checks on arrays (no I/O): `packsft verify` runs them.

    tokens[r]        = BOS ..seg 1.. BOS ..seg 2.. PAD PAD PAD        (L+1 ids, each < vocab_size)
    loss_mask[r]     =     m  m  m    0  m  m  m    0   0   0         (L flags, 0 or 1)
    segment_lengths  = |<--- s1 --->|<---- s2 --->|                   (each >= 1, sum <= L+1)
    row_segments     = CSR offsets: 0 .. len(segment_lengths), non-decreasing

- every row holds at least one segment; positions after its segments hold the pad id, never trained;
- `--pad-multiple N`: every segment length is a multiple of N; `--max-segments K`: no row holds more than K;
- aligned/bestfit: every segment starts with BOS (when the tokenizer has one), and the label at a
  segment start (the flag of its first token) is never trained, so no label crosses two conversations;
- linear: every row but the last is full, and consecutive rows share their boundary token;
- `--template roles`: control tokens only where the format puts them (`check_control_tokens`);
  `--template chat`: what each message trains, read by the template's headers (chat_turns.py).

Rows are read in blocks (violations.py), so memory stays bounded on memory-mapped shards of any size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from packsft.pack.rows import row_lengths, segment_starts
from packsft.verify.chat_turns import ChatMarkers, check_chat_turns
from packsft.verify.violations import BLOCK_ROWS, Violation, in_blocks, row_violations
from packsft.write.layout import (
    LOSS_MASK_NPY,
    NO_TOPOLOGY,
    ROW_SEGMENTS_NPY,
    SEGMENT_LENGTHS_NPY,
    TOKENS_NPY,
    Topology,
)

__all__ = ["ChatMarkers", "ControlIds", "Violation", "check_chat_turns", "check_control_tokens", "check_offsets",
           "check_segments", "check_shard_arrays"]


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
    found += row_violations(ROW_SEGMENTS_NPY, decreasing, "offsets decrease (row_segments must be non-decreasing)")
    return found


@dataclass(frozen=True)
class RowLayout:
    """Where the segments lie in the rows (derived from valid segment arrays)."""

    used: np.ndarray  # positions each row's segments fill
    seg_rows: np.ndarray  # row of every segment
    starts: np.ndarray  # start column of every segment


def check_segments(segment_lengths: np.ndarray, row_segments: np.ndarray, rows: int,
                   capacity: int, topology: Topology = NO_TOPOLOGY) -> tuple[list[Violation], RowLayout | None]:
    """The segment arrays' own invariants, and the rows' layout when they hold."""
    segment_lengths, row_segments = np.asarray(segment_lengths), np.asarray(row_segments)
    found = check_offsets(segment_lengths, row_segments, rows)
    if found:
        return found, None
    short = np.flatnonzero(segment_lengths < 1)
    found += row_violations(SEGMENT_LENGTHS_NPY, np.searchsorted(row_segments, short, side="right") - 1, "a segment has length < 1")
    used = row_lengths(segment_lengths, row_segments)
    found += row_violations(SEGMENT_LENGTHS_NPY, np.flatnonzero(used > capacity),
                   f"segments add up to more than the row's {capacity} positions")
    found += row_violations(ROW_SEGMENTS_NPY, np.flatnonzero(np.diff(row_segments) == 0), "row holds no segment")
    multiple = topology.pad_multiple
    if multiple > 1:
        off = np.flatnonzero(segment_lengths % multiple)
        found += row_violations(SEGMENT_LENGTHS_NPY, np.searchsorted(row_segments, off, side="right") - 1,
                                f"a segment length is not a multiple of the pad multiple {multiple}")
    if topology.max_segments is not None:
        found += row_violations(ROW_SEGMENTS_NPY, np.flatnonzero(np.diff(row_segments) > topology.max_segments),
                                f"row holds more than max_segments {topology.max_segments} segments")
    if found:
        return found, None
    seg_rows = np.repeat(np.arange(rows, dtype=np.int64), np.diff(row_segments))
    return found, RowLayout(used, seg_rows, segment_starts(segment_lengths, row_segments))


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
    topology: Topology = NO_TOPOLOGY,
) -> list[Violation]:
    """Every invariant of one shard's arrays; shapes and dtypes must already match the contract.

    Without segments (a parquet-only output) only the per-token checks run.
    """
    rows, capacity = tokens.shape
    found: list[Violation] = []
    layout = None
    if segment_lengths is not None and row_segments is not None:
        found, layout = check_segments(segment_lengths, row_segments, rows, capacity, topology)
    separate = strategy in ("aligned", "bestfit")  # conversations never share a segment
    row_bos = bos_id if separate else None
    for begin in range(0, rows, BLOCK_ROWS):
        found += _check_block(tokens, loss_mask, begin, vocab_size=vocab_size, pad_id=pad_id, bos_id=row_bos,
                              used=None if layout is None else layout.used)
    if layout is not None and separate:
        found += _check_segment_starts(tokens, loss_mask, layout, row_bos)
    if layout is not None and strategy == "linear" and rows > 1:
        found += row_violations(SEGMENT_LENGTHS_NPY, np.flatnonzero(layout.used[:-1] != capacity),
                       "a linear row other than the last is not full")
        shared = np.asarray(tokens[1:, 0]) == np.asarray(tokens[:-1, -1])
        found += row_violations(TOKENS_NPY, 1 + np.flatnonzero(~shared), "a linear row does not start with the previous row's last token")
    return found


def _check_block(tokens: np.ndarray, loss_mask: np.ndarray, begin: int, *, vocab_size: int, pad_id: int,
                 bos_id: int | None, used: np.ndarray | None) -> list[Violation]:
    """The per-token invariants of rows begin .. begin+BLOCK_ROWS (pads only when the segments are valid)."""
    block = np.asarray(tokens[begin : begin + BLOCK_ROWS])
    mask = np.asarray(loss_mask[begin : begin + BLOCK_ROWS])
    found = row_violations(TOKENS_NPY, begin + np.flatnonzero((block >= vocab_size).any(axis=1)),
                  f"token id >= vocabulary size {vocab_size}")
    found += row_violations(LOSS_MASK_NPY, begin + np.flatnonzero((mask > 1).any(axis=1)), "loss_mask value other than 0 or 1")
    if bos_id is not None:
        found += row_violations(TOKENS_NPY, begin + np.flatnonzero(block[:, 0] != bos_id), f"row does not start with BOS (id {bos_id})")
    if used is not None:
        pad = np.arange(block.shape[1])[None, :] >= used[begin : begin + len(block), None]
        found += row_violations(TOKENS_NPY, begin + np.flatnonzero((pad & (block != pad_id)).any(axis=1)),
                       f"position after the row's segments does not hold the pad id {pad_id}")
        found += row_violations(LOSS_MASK_NPY, begin + np.flatnonzero((pad[:, 1:] & (mask != 0)).any(axis=1)),
                       "a pad position is trained")
    return found


def _check_segment_starts(tokens: np.ndarray, loss_mask: np.ndarray, layout: RowLayout,
                          bos_id: int | None) -> list[Violation]:
    """Segments after a row's first start at BOS, and the label at their start is never trained."""
    inner = layout.starts >= 1  # segments at column 0 are the row starts, checked per block
    rows, starts = layout.seg_rows[inner], layout.starts[inner]
    found = []
    if bos_id is not None:
        found += row_violations(TOKENS_NPY, rows[np.asarray(tokens[rows, starts]) != bos_id],
                       f"a segment does not start with BOS (id {bos_id})")
    trained = np.asarray(loss_mask[rows, starts - 1]) != 0
    found += row_violations(LOSS_MASK_NPY, rows[trained], "the label at a segment start is trained")
    return found


@dataclass(frozen=True)
class ControlIds:
    """The control tokens of the role-token format (`--template roles`), from dataset.json special_ids."""

    bos: int | None
    eos: int
    pad: int
    user: int
    assistant: int
    system: int

    @staticmethod
    def of(special_ids: dict[str, int | None], template: str | None) -> ControlIds | None:
        """None for chat-template outputs or when an id is missing (nothing to check against)."""
        needed = ("eos", "pad", "user", "assistant", "system")
        if template != "roles" or any(special_ids.get(key) is None for key in needed):
            return None
        return ControlIds(special_ids.get("bos"), *(int(special_ids[key]) for key in needed))  # type: ignore[arg-type]


def check_control_tokens(
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    segment_lengths: np.ndarray,
    row_segments: np.ndarray,
    *,
    control: ControlIds,
    mask: str,
    pad_multiple: int = 1,
) -> list[Violation]:
    """Control tokens only where the role-token format puts them; content never encodes to one.

    Inside a segment: a BOS only at its start, an EOS only at its end, never a pad (but for fewer than
    `pad_multiple` alignment pads that end it: its piece then ends before them); under
    `assistant_only` the token after a `<|user|>` or `<|system|>` role token is never trained (a role
    token inside an assistant message, from content such as "hi <|user|> there", would be).
    Offsets must already be valid (`check_offsets`). Rows are read in blocks.
    """
    check = functools.partial(_control_block, control=control, mask=mask, pad_multiple=pad_multiple)
    return in_blocks(check, tokens, loss_mask, segment_lengths, row_segments)


def alignment_pads(tokens: np.ndarray, segment_lengths: np.ndarray, row_segments: np.ndarray,
                   pad_id: int) -> np.ndarray:
    """Per segment: the pad ids that end it (`--pad-multiple`'s alignment pads, and any pad id its piece ends with)."""
    rows, capacity = tokens.shape
    seg_rows = np.repeat(np.arange(rows, dtype=np.int64), np.diff(row_segments))
    ends = seg_rows * capacity + segment_starts(segment_lengths, row_segments) + segment_lengths
    kept = np.flatnonzero(tokens.reshape(-1) != pad_id)
    before = np.searchsorted(kept, ends) - 1  # the last non-pad position before each segment's end
    last = np.where(before >= 0, kept[np.maximum(before, 0)], -1)
    return np.minimum(ends - 1 - last, segment_lengths).astype(np.int64)


def _control_block(tokens: np.ndarray, loss_mask: np.ndarray, segment_lengths: np.ndarray,
                   row_segments: np.ndarray, control: ControlIds, mask: str, pad_multiple: int) -> list[Violation]:
    rows, capacity = tokens.shape
    used, starts = row_lengths(segment_lengths, row_segments), segment_starts(segment_lengths, row_segments)
    seg_rows = np.repeat(np.arange(rows, dtype=np.int64), np.diff(row_segments))
    found = []
    pieces = segment_lengths
    if pad_multiple > 1:
        tail = alignment_pads(tokens, segment_lengths, row_segments, control.pad)
        found += row_violations("tokens.npy", seg_rows[tail >= pad_multiple],
                                f"a segment ends with {pad_multiple} or more pads (more than --pad-multiple needs)")
        pieces = segment_lengths - np.minimum(tail, pad_multiple - 1)
    is_start = np.zeros((rows, capacity), bool)
    is_last = np.zeros((rows, capacity), bool)
    is_start[seg_rows, starts] = True
    is_last[seg_rows, np.minimum(starts + np.maximum(pieces, 1) - 1, capacity - 1)] = True
    inside = np.arange(capacity)[None, :] < used[:, None]
    if pad_multiple > 1:  # a segment's alignment pads are not part of its piece
        aligned = np.zeros((rows, capacity + 1), np.int32)
        np.add.at(aligned, (seg_rows, starts + pieces), 1)
        np.add.at(aligned, (seg_rows, starts + segment_lengths), -1)
        inside &= np.cumsum(aligned, axis=1)[:, :capacity] == 0
    if control.bos is not None:
        found += row_violations("tokens.npy", np.flatnonzero((inside & ~is_start & (tokens == control.bos)).any(axis=1)),
                       f"a BOS token (id {control.bos}) inside a segment: message content became a control token")
    found += row_violations("tokens.npy", np.flatnonzero((inside & ~is_last & (tokens == control.eos)).any(axis=1)),
                   f"an EOS token (id {control.eos}) before the end of its segment: message content became a control token")
    if control.pad not in (control.eos, control.bos):
        found += row_violations("tokens.npy", np.flatnonzero((inside & (tokens == control.pad)).any(axis=1)),
                       f"a pad token (id {control.pad}) inside a segment")
    if mask == "assistant_only":
        ids = (control.bos, control.eos, control.pad, control.user, control.assistant, control.system)
        is_control = np.isin(tokens, [i for i in ids if i is not None])
        opens_untrained = np.isin(tokens[:, :-1], [control.user, control.system]) & ~is_last[:, :-1] & inside[:, :-1]
        bad = opens_untrained & ~is_control[:, 1:] & (np.asarray(loss_mask) != 0)
        found += row_violations("loss_mask.npy", np.flatnonzero(bad.any(axis=1)),
                       "the token after a <|user|> or <|system|> role token is trained: a role token inside an "
                       "assistant message (message content became a control token)")
    return found
