"""Turn rendered conversations into pieces that fit a row of L+1 tokens (`--long split|truncate|drop`).

A conversation that fits is one piece. A longer one, under `split`, is cut only at message
boundaries, and every piece after the first is re-opened with its context, re-rendered with mask 0:

    piece 1:  BOS SYS.. USR q1.. ASST a1.. USR            <- ends with the turn-end token it trains
    piece 2:  BOS SYS.. USR q1.. | ASST a2.. USR q3.. ASST a3.. EOS
              `--- context, 0 --'  `--- original flags (first role token 0: piece 1 trained it)

When one user+assistant exchange alone does not fit, the user message is kept (shortened from the
left with a marker if it takes more than half a row) and the assistant message is cut across pieces,
each re-opened with the same context. Nothing trainable is lost; each trained label sees its question.

Chat-template renderings (`msg_headers` set) differ in two ways: a message opens with several header
tokens instead of one role token (kept whole wherever the role token is kept), and a turn's end-of-turn
tokens are the end of its own message span, so closing a piece adds nothing from the next message.

Cost: O(tokens) copies for the conversations that are cut; conversations that fit are sliced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from packsft.render import SYSTEM_CODE, USER_CODE, RenderedBatch, concat_ranges

# Copied context (system + prompting user message) may take at most this share of a row; a longer
# prompt is shortened from the left (its end, where the question usually is, is kept).
CONTEXT_SHARE = 0.75
# Cut an assistant turn mid-way to fill a piece when a cut at the message boundary would leave at least
# this many tokens of the row empty. The continuation is re-opened with the turn's question.
DEFAULT_FILL_CUT = 64


@dataclass
class PieceTable:
    """Pieces as flat arrays: piece p is `ids[offsets[p]:offsets[p+1]]`, cut from conversation `conv[p]`."""

    ids: np.ndarray
    flags: np.ndarray
    offsets: np.ndarray
    conv: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class SplitCounts:
    conversations_truncated: int = 0
    conversations_dropped_long: int = 0
    conversations_split: int = 0
    pieces_split: int = 0  # pieces that came out of split conversations
    exchanges_split: int = 0  # single messages cut across pieces
    prompts_shortened: int = 0
    prompted_labels: int = 0  # trained labels whose turn has a prompting user message
    prompted_labels_complete: int = 0  # ... whose prompt is entirely inside the same piece
    per_conv_truncated: list[int] = field(default_factory=list)


def split_long(
    batch: RenderedBatch,
    seq_length: int,
    policy: str,
    marker: Callable[[int], list[int]] | None = None,
    fill_cut: int = DEFAULT_FILL_CUT,
    context_share: float = CONTEXT_SHARE,
) -> tuple[PieceTable, SplitCounts]:
    """Cut `batch` into pieces of at most seq_length + 1 tokens.

    Args:
        policy: "split" (cut at message boundaries, re-open with context), "truncate" (keep the first
            L+1 tokens) or "drop" (discard the conversation).
        marker: token ids of the marker put where `n` tokens of a long prompt were cut away.
        fill_cut: cut a trained turn mid-way when a message-boundary cut would waste this many tokens
            or more of the row; 0 cuts inside a turn only when it alone exceeds a row.
        context_share: the most of a row that copied context (system + question) may take; a longer
            question is kept by its end. Higher keeps more questions whole and repeats more tokens.
    """
    capacity = seq_length + 1
    counts = SplitCounts()
    out_ids: list[np.ndarray] = []
    out_flags: list[np.ndarray] = []
    out_lengths: list[np.ndarray] = []
    out_conv: list[np.ndarray] = []
    prompted = _prompted_flags(batch)
    prompted_cum = np.concatenate([[0], np.cumsum(prompted, dtype=np.int64)])
    offsets, lengths = batch.conv_offsets, batch.lengths

    def add_run(first: int, stop: int) -> None:
        """Conversations first..stop-1 fit whole: one contiguous slice of the batch, no copy per piece."""
        if first >= stop:
            return
        lo, hi = int(offsets[first]), int(offsets[stop])
        out_ids.append(batch.ids[lo:hi])
        out_flags.append(batch.flags[lo:hi])
        out_lengths.append(lengths[first:stop])
        out_conv.append(np.arange(first, stop, dtype=np.int64))
        # A piece's first token is never a label (it starts the segment).
        labels = int((prompted_cum[offsets[first + 1 : stop + 1]] - prompted_cum[offsets[first:stop] + 1]).sum())
        counts.prompted_labels += labels
        counts.prompted_labels_complete += labels

    def add_piece(c: int, ids: np.ndarray, flags: np.ndarray) -> None:
        out_ids.append(ids)
        out_flags.append(flags)
        out_lengths.append(np.asarray([len(ids)], np.int64))
        out_conv.append(np.asarray([c], np.int64))

    previous = 0
    for c in np.flatnonzero(lengths > capacity).tolist():
        add_run(previous, c)
        previous = c + 1
        start = int(offsets[c])
        if policy == "drop":
            counts.conversations_dropped_long += 1
            counts.per_conv_truncated.append(c)
        elif policy == "truncate":
            add_piece(c, batch.ids[start : start + capacity], batch.flags[start : start + capacity])
            counts.conversations_truncated += 1
            counts.per_conv_truncated.append(c)
            kept = int(prompted_cum[start + capacity] - prompted_cum[start + 1])
            counts.prompted_labels += kept
            counts.prompted_labels_complete += kept
        else:
            pieces = _ConversationSplitter(batch, c, capacity, marker, prompted_cum, counts, fill_cut,
                                           context_share).split()
            counts.conversations_split += 1
            counts.pieces_split += len(pieces)
            for ids, flags in pieces:
                add_piece(c, ids, flags)
    add_run(previous, len(batch))
    piece_lengths = np.concatenate(out_lengths) if out_lengths else np.zeros(0, np.int64)
    table = PieceTable(
        ids=np.concatenate(out_ids) if out_ids else np.zeros(0, np.int64),
        flags=np.concatenate(out_flags) if out_flags else np.zeros(0, np.uint8),
        offsets=np.concatenate([[0], np.cumsum(piece_lengths)]).astype(np.int64),
        conv=np.concatenate(out_conv) if out_conv else np.zeros(0, np.int64),
    )
    return table, counts


def prompt_starts(batch: RenderedBatch) -> np.ndarray:
    """Per token: where the user message that prompts its turn starts (flat position), or -1.

    The prompt of a message is the last user message before it in its conversation; the EOS is
    prompted by the last user message at or before the final message.
    """
    starts = np.full(len(batch.ids), -1, np.int64)
    if not len(batch.msg_roles):
        return starts
    counts = np.diff(batch.conv_msg_offsets)
    msg_conv = np.repeat(np.arange(len(batch)), counts)
    first = batch.conv_msg_offsets[:-1][msg_conv]
    index = np.arange(len(batch.msg_roles))
    last_user_at = np.maximum.accumulate(np.where(batch.msg_roles == USER_CODE, index, -1))
    before = np.concatenate([[-1], last_user_at[:-1]])
    before = np.where(before >= first, before, -1)
    prompt = np.where(before >= 0, batch.msg_starts[np.maximum(before, 0)], -1)
    span_lens = batch.msg_ends - batch.msg_starts
    starts[concat_ranges(batch.msg_starts, span_lens)] = np.repeat(prompt, span_lens)
    nonempty = counts > 0
    last = (batch.conv_msg_offsets[1:] - 1)[nonempty]
    at_or_before = np.where(last_user_at[last] >= batch.conv_msg_offsets[:-1][nonempty], last_user_at[last], -1)
    starts[batch.conv_offsets[1:][nonempty] - 1] = np.where(
        at_or_before >= 0, batch.msg_starts[np.maximum(at_or_before, 0)], -1
    )
    return starts


def _prompted_flags(batch: RenderedBatch) -> np.ndarray:
    """Per token: 1 where the token is trained and a user message prompts its turn.

    Same rule as `prompt_starts(batch) >= 0`, built cheaply: each conversation is tiled as
    [head][message]...[message][tail], every tile gets one value, and one np.repeat spreads them.
    """
    n, msgs = len(batch), len(batch.msg_roles)
    if not n or not msgs:
        return ((prompt_starts(batch) >= 0) & batch.flags.astype(bool)).astype(np.uint8)
    counts = np.diff(batch.conv_msg_offsets)
    if (counts == 0).any():  # a conversation without messages: use the general rule
        return ((prompt_starts(batch) >= 0) & batch.flags.astype(bool)).astype(np.uint8)
    msg_conv = np.repeat(np.arange(n), counts)
    is_user = batch.msg_roles == USER_CODE
    user_cum = np.concatenate([[0], np.cumsum(is_user)])
    first, last = batch.conv_msg_offsets[:-1], batch.conv_msg_offsets[1:] - 1
    has_prompt = (user_cum[:-1] - user_cum[first][msg_conv]) > 0
    eos_prompt = (user_cum[last + 1] - user_cum[first]) > 0
    tiles = msgs + 2 * n
    value = np.zeros(tiles, np.uint8)
    length = np.zeros(tiles, np.int64)
    msg_tile = np.arange(msgs) + 2 * msg_conv + 1
    value[msg_tile] = has_prompt
    length[msg_tile] = batch.msg_ends - batch.msg_starts
    head_tile = first + 2 * np.arange(n)
    length[head_tile] = batch.msg_starts[first] - batch.conv_offsets[:-1]
    tail_tile = last + 2 * np.arange(n) + 2
    value[tail_tile] = eos_prompt
    length[tail_tile] = batch.conv_offsets[1:] - batch.msg_ends[last]
    return np.repeat(value, length) & batch.flags


class _ConversationSplitter:
    """Greedy splitting of one conversation (see the module docstring)."""

    def __init__(self, batch, conv, capacity, marker, prompted_cum, counts, fill_cut, context_share=CONTEXT_SHARE):
        self.batch, self.capacity, self.marker, self.counts = batch, capacity, marker, counts
        # Prefix sums of the per-token "trained and prompted" flags: labels in [lo, hi) in O(1).
        self.prompted_cum = prompted_cum
        self.fill_cut = fill_cut
        self.context_share = context_share
        self.start, self.end = int(batch.conv_offsets[conv]), int(batch.conv_offsets[conv + 1])
        self.msgs = list(range(int(batch.conv_msg_offsets[conv]), int(batch.conv_msg_offsets[conv + 1])))
        self.head_end = int(batch.msg_starts[self.msgs[0]]) if self.msgs else self.end
        self.pieces: list[tuple[np.ndarray, np.ndarray]] = []
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.length = 0
        self.has_body = False
        # Whether the user message that prompts what is being added is wholly in the current piece.
        self.prompt_whole = True
        # Role-token layout: a message's first token is its whole header and ends the previous turn.
        self.role_tokens = batch.msg_headers is None

    def _header(self, m: int) -> int:
        """Tokens of message m's header, kept whole when a message is shortened or cut."""
        lo, hi = int(self.batch.msg_starts[m]), int(self.batch.msg_ends[m])
        if self.role_tokens:
            return min(1, hi - lo)
        return min(max(int(self.batch.msg_headers[m]), 0), hi - lo, self.capacity // 4)

    # -- piece assembly -------------------------------------------------------------------------
    def _add(self, lo: int, hi: int, *, zero: bool = False, zero_first: bool = False) -> None:
        """Append ids[lo:hi]; `zero` masks it all (copied context), `zero_first` masks its first token
        (a role token whose turn-end label the previous piece already trained)."""
        if hi <= lo:
            return
        flags = self.batch.flags[lo:hi]
        if zero:
            flags = np.zeros(hi - lo, np.uint8)
        else:
            labels = int(self.prompted_cum[hi] - self.prompted_cum[lo])
            if zero_first and flags[0]:
                flags = flags.copy()
                flags[0] = 0
                labels -= int(self.prompted_cum[lo + 1] - self.prompted_cum[lo])
            self.counts.prompted_labels += labels
            if self.prompt_whole:
                self.counts.prompted_labels_complete += labels
        self.parts.append((self.batch.ids[lo:hi], flags))
        self.length += hi - lo

    def _add_marker(self, omitted: int) -> None:
        ids = self.marker(omitted) if self.marker else []
        if ids:
            self.parts.append((np.asarray(ids, np.int64), np.zeros(len(ids), np.uint8)))
            self.length += len(ids)

    def _add_shortened(self, m: int, room: int, *, zero: bool, zero_first: bool = False) -> bool:
        """Message m's header, a marker, and as much of the end of its content as fits in `room`.

        Returns False (and adds nothing) when not even the header and one token fit.
        """
        lo, hi = int(self.batch.msg_starts[m]), int(self.batch.msg_ends[m])
        head = self._header(m)
        content = hi - lo - head
        if room < head + min(content, 1):
            return False
        marker = len(self.marker(content)) if self.marker else 0
        if room < head + marker + 1:
            marker = 0
        keep = min(room - head - marker, content)
        self._add(lo, lo + head, zero=zero, zero_first=zero_first)
        if marker:
            self._add_marker(content - keep)
        self._add(hi - keep, hi, zero=zero)
        self.counts.prompts_shortened += 1
        return True

    def _close(self) -> None:
        ids, flags = np.concatenate([p[0] for p in self.parts]), np.concatenate([p[1] for p in self.parts])
        # A piece starts a segment, whose first label is never trained (chat pieces may lack a BOS).
        flags[:1] = 0
        self.pieces.append((ids, flags))
        self.parts, self.length, self.has_body = [], 0, False

    def _open(self, first_msg: int, reserve: int) -> None:
        """Start a piece whose body begins at message `first_msg`: BOS + system + prompting user, mask 0.

        The context leaves at least `reserve` tokens of the row for the body.
        """
        b = self.batch
        self._add(self.start, self.head_end, zero=True)
        system = next((m for m in self.msgs if m < first_msg and b.msg_roles[m] == SYSTEM_CODE), None)
        prompt = None
        if b.msg_roles[first_msg] != USER_CODE:
            prompt = next((m for m in reversed(self.msgs) if m < first_msg and b.msg_roles[m] == USER_CODE), None)
        budget = min(self._context_budget(), self.capacity - reserve) - self.length
        size = {m: int(b.msg_ends[m] - b.msg_starts[m]) for m in (system, prompt) if m is not None}
        # When both do not fit, the question matters more than the system message: the system message
        # gets at most a quarter of the budget.
        rooms = dict(size)
        if sum(size.values()) > budget:
            if system is not None:
                rooms[system] = min(size[system], budget // 4 if prompt is not None else budget)
            if prompt is not None:
                rooms[prompt] = budget - (rooms[system] if system is not None else 0)
        self.prompt_whole = True
        for m in (system, prompt):
            if m is None:
                continue
            if size[m] <= rooms[m]:
                self._add(int(b.msg_starts[m]), int(b.msg_ends[m]), zero=True)
            else:
                added = self._add_shortened(m, rooms[m], zero=True)
                if m == prompt:
                    self.prompt_whole = False
                elif not added and prompt is not None:
                    rooms[prompt] += rooms[m]  # the system message did not fit at all

    def _context_budget(self) -> int:
        return int(self.capacity * self.context_share)

    def _piece_trains(self) -> bool:
        return any(flags.any() for _, flags in self.parts)

    def _continuing(self) -> bool:
        """True at the start of a piece that continues the conversation: its first role token was
        trained as the previous piece's turn end (role-token layout only)."""
        return self.role_tokens and not self.has_body and bool(self.pieces)

    # -- the greedy walk ------------------------------------------------------------------------
    def split(self) -> list[tuple[np.ndarray, np.ndarray]]:
        b, cap = self.batch, self.capacity
        self._add(self.start, self.head_end)
        hi = self.head_end
        for i, m in enumerate(self.msgs):
            lo, hi = int(b.msg_starts[m]), int(b.msg_ends[m])
            # EOS, or room for the next message's role token that ends this turn (none for chat).
            tail = self.end - hi if i == len(self.msgs) - 1 else int(self.role_tokens)
            trained = bool(b.flags[lo + self._header(m) : hi].any())
            if b.msg_roles[m] == USER_CODE:
                self.prompt_whole = True
            if self.length + (hi - lo) + tail <= cap:
                self._add(lo, hi, zero_first=self._continuing())
                self.has_body = True
                continue
            gap = cap - self.length - tail - self._header(m)
            # Fill this piece with the start of the turn rather than leave `gap` tokens of padding, or
            # rather than close a piece that trains nothing (its context would only be repeated).
            if self.has_body and trained and gap > 0 and (
                (self.fill_cut and gap >= self.fill_cut) or not self._piece_trains()
            ):
                self._cut_across(m, tail)
                continue
            if self.has_body:
                # Close here; this message's role token ends the previous turn, trained in this piece.
                if self.role_tokens:
                    self._add(lo, lo + 1)
                self._close()
                self._open(m, reserve=self._header(m) + tail + 1)
                if self.length + (hi - lo) + tail <= cap:
                    self._add(lo, hi, zero_first=self.role_tokens)
                    self.has_body = True
                    continue
            if trained:
                self._cut_across(m, tail)
            else:
                # An untrained message (a long question) that cannot fit whole: keep its end, so the
                # answer still sees the question it asks (usually at the end), and mark the cut.
                room = min(max(self._context_budget() - self.length, self._header(m) + 1), cap - self.length - tail)
                self._add_shortened(m, room, zero=False, zero_first=self._continuing())
                self.prompt_whole = False
                self.has_body = True
        self._add(hi, self.end)
        self._close()
        return self.pieces

    def _cut_across(self, m: int, tail: int) -> None:
        """Add message m, cutting its content across as many pieces as needed, each re-opened with context."""
        b, cap = self.batch, self.capacity
        lo, hi = int(b.msg_starts[m]), int(b.msg_ends[m])
        head = self._header(m)
        self.counts.exchanges_split += 1
        self._add(lo, lo + head, zero_first=self._continuing())
        pos = lo + head
        while True:
            room = cap - self.length - tail
            if hi - pos <= room:
                self._add(pos, hi)
                self.has_body = True
                return
            room = max(room, 1)  # only a row too small for its own context gets here
            self._add(pos, pos + room)
            pos += room
            self._close()
            self._open(m, reserve=head + tail + 1)
            self._add(lo, lo + head, zero=True)
