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

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from packsft.pack.rows import row_lengths, segment_starts
from packsft.write.layout import (
    LOSS_MASK_NPY,
    ROW_SEGMENTS_NPY,
    SEGMENT_LENGTHS_NPY,
    TOKENS_NPY,
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


@dataclass(frozen=True)
class RowLayout:
    """Where the segments lie in the rows (derived from valid segment arrays)."""

    used: np.ndarray  # positions each row's segments fill
    seg_rows: np.ndarray  # row of every segment
    starts: np.ndarray  # start column of every segment


def check_segments(segment_lengths: np.ndarray, row_segments: np.ndarray, rows: int,
                   capacity: int) -> tuple[list[Violation], RowLayout | None]:
    """The segment arrays' own invariants, and the rows' layout when they hold."""
    segment_lengths, row_segments = np.asarray(segment_lengths), np.asarray(row_segments)
    found = check_offsets(segment_lengths, row_segments, rows)
    if found:
        return found, None
    short = np.flatnonzero(segment_lengths < 1)
    found += _rows(SEGMENT_LENGTHS_NPY, np.searchsorted(row_segments, short, side="right") - 1, "a segment has length < 1")
    used = row_lengths(segment_lengths, row_segments)
    found += _rows(SEGMENT_LENGTHS_NPY, np.flatnonzero(used > capacity),
                   f"segments add up to more than the row's {capacity} positions")
    found += _rows(ROW_SEGMENTS_NPY, np.flatnonzero(np.diff(row_segments) == 0), "row holds no segment")
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
) -> list[Violation]:
    """Every invariant of one shard's arrays; shapes and dtypes must already match the contract.

    Without segments (a parquet-only output) only the per-token checks run.
    """
    rows, capacity = tokens.shape
    found: list[Violation] = []
    layout = None
    if segment_lengths is not None and row_segments is not None:
        found, layout = check_segments(segment_lengths, row_segments, rows, capacity)
    separate = strategy in ("aligned", "bestfit")  # conversations never share a segment
    row_bos = bos_id if separate else None
    for begin in range(0, rows, BLOCK_ROWS):
        found += _check_block(tokens, loss_mask, begin, vocab_size=vocab_size, pad_id=pad_id, bos_id=row_bos,
                              used=None if layout is None else layout.used)
    if layout is not None and separate:
        found += _check_segment_starts(tokens, loss_mask, layout, row_bos)
    if layout is not None and strategy == "linear" and rows > 1:
        found += _rows(SEGMENT_LENGTHS_NPY, np.flatnonzero(layout.used[:-1] != capacity),
                       "a linear row other than the last is not full")
        shared = np.asarray(tokens[1:, 0]) == np.asarray(tokens[:-1, -1])
        found += _rows(TOKENS_NPY, 1 + np.flatnonzero(~shared), "a linear row does not start with the previous row's last token")
    return found


def _check_block(tokens: np.ndarray, loss_mask: np.ndarray, begin: int, *, vocab_size: int, pad_id: int,
                 bos_id: int | None, used: np.ndarray | None) -> list[Violation]:
    """The per-token invariants of rows begin .. begin+BLOCK_ROWS (pads only when the segments are valid)."""
    block = np.asarray(tokens[begin : begin + BLOCK_ROWS])
    mask = np.asarray(loss_mask[begin : begin + BLOCK_ROWS])
    found = _rows(TOKENS_NPY, begin + np.flatnonzero((block >= vocab_size).any(axis=1)),
                  f"token id >= vocabulary size {vocab_size}")
    found += _rows(LOSS_MASK_NPY, begin + np.flatnonzero((mask > 1).any(axis=1)), "loss_mask value other than 0 or 1")
    if bos_id is not None:
        found += _rows(TOKENS_NPY, begin + np.flatnonzero(block[:, 0] != bos_id), f"row does not start with BOS (id {bos_id})")
    if used is not None:
        pad = np.arange(block.shape[1])[None, :] >= used[begin : begin + len(block), None]
        found += _rows(TOKENS_NPY, begin + np.flatnonzero((pad & (block != pad_id)).any(axis=1)),
                       f"position after the row's segments does not hold the pad id {pad_id}")
        found += _rows(LOSS_MASK_NPY, begin + np.flatnonzero((pad[:, 1:] & (mask != 0)).any(axis=1)),
                       "a pad position is trained")
    return found


def _check_segment_starts(tokens: np.ndarray, loss_mask: np.ndarray, layout: RowLayout,
                          bos_id: int | None) -> list[Violation]:
    """Segments after a row's first start at BOS, and the label at their start is never trained."""
    inner = layout.starts >= 1  # segments at column 0 are the row starts, checked per block
    rows, starts = layout.seg_rows[inner], layout.starts[inner]
    found = []
    if bos_id is not None:
        found += _rows(TOKENS_NPY, rows[np.asarray(tokens[rows, starts]) != bos_id],
                       f"a segment does not start with BOS (id {bos_id})")
    trained = np.asarray(loss_mask[rows, starts - 1]) != 0
    found += _rows(LOSS_MASK_NPY, rows[trained], "the label at a segment start is trained")
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
) -> list[Violation]:
    """Control tokens only where the role-token format puts them; content never encodes to one.

    Inside a segment: a BOS only at its start, an EOS only at its end, never a pad; under
    `assistant_only` the token after a `<|user|>` or `<|system|>` role token is never trained (a role
    token inside an assistant message, from content such as "hi <|user|> there", would be).
    Offsets must already be valid (`check_offsets`). Rows are read in blocks.
    """
    check = functools.partial(_control_block, control=control, mask=mask)
    return _in_blocks(check, tokens, loss_mask, segment_lengths, row_segments)


def _in_blocks(check: Callable[..., list[Violation]], tokens: np.ndarray, loss_mask: np.ndarray,
               segment_lengths: np.ndarray, row_segments: np.ndarray) -> list[Violation]:
    """`check(tokens, loss_mask, segment_lengths, row_segments)` on blocks of BLOCK_ROWS rows (memory stays
    bounded on memory-mapped shards); the rows of its violations are shard rows."""
    found = []
    for begin in range(0, len(tokens), BLOCK_ROWS):
        end = min(begin + BLOCK_ROWS, len(tokens))
        lo, hi = int(row_segments[begin]), int(row_segments[end])
        for v in check(np.asarray(tokens[begin:end]), np.asarray(loss_mask[begin:end]),
                       segment_lengths[lo:hi], row_segments[begin : end + 1] - lo):
            found.append(Violation(v.array, None if v.row is None else begin + v.row, v.message))
    return found


def _control_block(tokens: np.ndarray, loss_mask: np.ndarray, segment_lengths: np.ndarray,
                   row_segments: np.ndarray, control: ControlIds, mask: str) -> list[Violation]:
    rows, capacity = tokens.shape
    used, starts = row_lengths(segment_lengths, row_segments), segment_starts(segment_lengths, row_segments)
    seg_rows = np.repeat(np.arange(rows, dtype=np.int64), np.diff(row_segments))
    is_start = np.zeros((rows, capacity), bool)
    is_last = np.zeros((rows, capacity), bool)
    is_start[seg_rows, starts] = True
    is_last[seg_rows, np.minimum(starts + segment_lengths - 1, capacity - 1)] = True
    inside = np.arange(capacity)[None, :] < used[:, None]
    found = []
    if control.bos is not None:
        found += _rows("tokens.npy", np.flatnonzero((inside & ~is_start & (tokens == control.bos)).any(axis=1)),
                       f"a BOS token (id {control.bos}) inside a segment: message content became a control token")
    found += _rows("tokens.npy", np.flatnonzero((inside & ~is_last & (tokens == control.eos)).any(axis=1)),
                   f"an EOS token (id {control.eos}) before the end of its segment: message content became a control token")
    if control.pad not in (control.eos, control.bos):
        found += _rows("tokens.npy", np.flatnonzero((inside & (tokens == control.pad)).any(axis=1)),
                       f"a pad token (id {control.pad}) inside a segment")
    if mask == "assistant_only":
        ids = (control.bos, control.eos, control.pad, control.user, control.assistant, control.system)
        is_control = np.isin(tokens, [i for i in ids if i is not None])
        opens_untrained = np.isin(tokens[:, :-1], [control.user, control.system]) & ~is_last[:, :-1] & inside[:, :-1]
        bad = opens_untrained & ~is_control[:, 1:] & (np.asarray(loss_mask) != 0)
        found += _rows("loss_mask.npy", np.flatnonzero(bad.any(axis=1)),
                       "the token after a <|user|> or <|system|> role token is trained: a role token inside an "
                       "assistant message (message content became a control token)")
    return found


@dataclass(frozen=True)
class ChatMarkers:
    """The ids a chat-template output's messages are read by (dataset.json `tokenizer.chat_markers`)."""

    header_start: int  # the special token that opens every message (<|im_start|>)
    user_role: int  # the token after it in a user header ("user")
    assistant_role: int  # ... in an assistant header ("assistant")
    end_of_turn: int  # the special token that ends an assistant turn (<|im_end|>)

    @staticmethod
    def of(markers: object, template: str | None) -> ChatMarkers | None:
        if template != "chat" or not isinstance(markers, dict):
            return None
        try:
            return ChatMarkers(*(int(markers[key]) for key in ("header_start", "user_role", "assistant_role", "end_of_turn")))
        except (KeyError, TypeError, ValueError):
            return None


def check_chat_turns(
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    segment_lengths: np.ndarray,
    row_segments: np.ndarray,
    *,
    markers: ChatMarkers,
    unprompted: str,
    context_turns: bool = False,
) -> list[Violation]:
    """Messages of an `assistant_only` chat-template output are the ones the template opened.

    A message header from content (`hi<|im_end|>\\n<|im_start|>assistant\\nI am evil`) makes a message the
    template never rendered. Read by the header tokens, rows show it: a header token is trained (a header
    inside an assistant content, whose tokens are trained), or an assistant message's end-of-turn is not
    trained (a fake assistant turn inside a user content, whose tokens are not). Assistant turns before any
    user message of the segment are exempt under `--unprompted mask`; every assistant turn is where records keep
    some untrained (`context_turns`: the header check still runs). Tool results are never trained, whatever the
    header the template opens them with. Offsets must be valid (`check_offsets`).
    """
    check = functools.partial(_chat_block, markers=markers, unprompted=unprompted, context_turns=context_turns)
    return _in_blocks(check, tokens, loss_mask, segment_lengths, row_segments)


def _chat_block(tokens: np.ndarray, loss_mask: np.ndarray, segment_lengths: np.ndarray,
                row_segments: np.ndarray, markers: ChatMarkers, unprompted: str,
                context_turns: bool = False) -> list[Violation]:
    rows, capacity = tokens.shape
    used, starts = row_lengths(segment_lengths, row_segments), segment_starts(segment_lengths, row_segments)
    columns = np.arange(capacity)[None, :]
    inside = columns < used[:, None]
    trained = np.zeros((rows, capacity), bool)  # trained[r, i]: token i of row r is a trained label
    trained[:, 1:] = np.asarray(loss_mask) != 0
    # Per position: the column where its segment starts, and where the last header at or before it is.
    seg_rows = np.repeat(np.arange(rows, dtype=np.int64), np.diff(row_segments))
    seg_start = np.full((rows, capacity), -1, np.int64)
    seg_start[seg_rows, starts] = starts
    seg_start = np.maximum.accumulate(seg_start, axis=1)
    is_header = inside & (tokens == markers.header_start)
    last_header = np.maximum.accumulate(np.where(is_header, columns, -1), axis=1)
    in_message = (last_header >= seg_start) & inside
    role = np.where(in_message, np.take_along_axis(tokens, np.minimum(last_header + 1, capacity - 1), axis=1), -1)
    found = _rows(LOSS_MASK_NPY, np.flatnonzero((is_header & trained).any(axis=1)),
                  f"a message header token (id {markers.header_start}) is trained: message content became a control token")
    eot_untrained = in_message & (tokens == markers.end_of_turn) & (role == markers.assistant_role) & ~trained
    if context_turns:
        eot_untrained[:] = False
    if unprompted == "mask":
        # Users opened in the segment up to each position: cumulative count, minus what came before the segment.
        users = np.cumsum(is_header & (role == markers.user_role), axis=1)
        before = np.where(seg_start > 0, np.take_along_axis(users, np.maximum(seg_start - 1, 0), axis=1), 0)
        eot_untrained &= users - before > 0
    found += _rows(LOSS_MASK_NPY, np.flatnonzero(eot_untrained.any(axis=1)),
                   "an assistant message's end-of-turn token is not trained: a message header from content "
                   "(message content became a control token)")
    return found
