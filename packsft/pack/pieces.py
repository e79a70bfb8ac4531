"""The piece builder: one conversation's pieces, a span of the batch at a time, counting the labels they keep.

Its state (the open piece, whether its prompt and tool results are whole, the counts) changes only through its
methods, each named for a step of the split (split.py): `start_message`, `add_whole`, `add_shortened_message`,
`start_cut`/`resume_cut`/`end_cut` for a turn cut across pieces, `add_turn_end` and `close`, `reopen` and
`add_context` for the context a new piece repeats, `rollback`, `finish`.

Before each whole message after the first of a piece's body it records a `Mark`, the state to return to when
the cut chooser (`cuts.py`) closes the piece at that earlier boundary instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from packsft.pack.labels import LabelPrefix, SpanLabels
from packsft.pack.table import Piece, SplitCounts
from packsft.render.batch import RenderedBatch
from packsft.render.markers import Marker
from packsft.render.tokenizer import TOKEN_ID_DTYPE

# With --prompt-start-share (default 0: the end only), a message shortened to fit keeps that share of what fits from
# its start, the rest from its end: the end usually asks the question and the start gives the instruction, which is
# usually the shorter part; 0.25 keeps both.


class Mark(NamedTuple):
    """The state before a whole message was added to a piece: a place the piece may be closed instead."""

    message: int  # its position in the conversation's message list
    parts: int
    length: int
    trained: int
    prompt_whole: bool
    results_whole: bool
    tally: tuple[int, ...]  # the builder's counters then, in TALLY's order
    view: tuple[int, int] = (-1, -1)  # the batch span the piece's last part was to be a view of (PieceBuilder._view)


# The counters a builder changes while it adds spans, kept as a list (a snapshot per mark is a tuple of it, not a
# copy of a SplitCounts); `counts` and `finish` name them.
TALLY = ("prompted_labels", "prompted_labels_complete", "turn_labels_whole", "answer_labels", "answer_labels_complete",
         "answer_labels_whole", "exchanges_split", "prompts_shortened")


@dataclass
class PieceBuilder:
    """The open piece as (ids, flags) parts of the batch, the pieces closed before it, and what they count.

    Read `length`, `trained`, `has_body`, `marks`, `pieces` and `counts`; change them only through the methods.
    """

    batch: RenderedBatch
    prefix: LabelPrefix
    marker: Marker | None = None
    start_share: float = 0.0  # of a shortened message's kept tokens, the share from its start (--prompt-start-share)
    _tally: list[int] = field(default_factory=lambda: [0] * len(TALLY), init=False)  # what the pieces count
    _pieces: list[Piece] = field(default_factory=list, init=False)
    _ids: list[np.ndarray] = field(default_factory=list, init=False)  # the open piece's parts (but `_view`)
    _flags: list[np.ndarray] = field(default_factory=list, init=False)
    _marks: list[Mark] = field(default_factory=list, init=False)
    _length: int = field(default=0, init=False)  # tokens in the open piece
    _trained: int = field(default=0, init=False)  # trained labels in the open piece
    _has_body: bool = field(default=False, init=False)  # the open piece holds more than copied context
    _prompt_whole: bool = field(default=True, init=False)  # the prompting user message is wholly in the piece
    _results_whole: bool = field(default=True, init=False)  # ... and so are the tool results the turn answers
    _msg_whole: bool = field(default=True, init=False)  # the message being added started in this piece
    # The open piece's last part where it is a span ids[lo:hi] of the batch with its own flags, not yet sliced into
    # `_ids` (`_flush`); (-1, -1) where there is none. A span added right after it widens it (`_append`): a run of
    # whole messages is one part, not one a message (joining the parts of a ShareGPT unit's 15k spans cost 10 ms),
    # sliced once, not at each message it grows by.
    _view: tuple[int, int] = field(default=(-1, -1), init=False)

    @property
    def length(self) -> int:
        """Tokens in the open piece."""
        return self._length

    @property
    def trained(self) -> int:
        """Trained labels in the open piece."""
        return self._trained

    @property
    def has_body(self) -> bool:
        """Whether the open piece holds more than copied context."""
        return self._has_body

    @property
    def reopened(self) -> bool:
        """Whether the open piece continues the conversation after a closed one and holds no body yet."""
        return not self._has_body and bool(self._pieces)

    @property
    def marks(self) -> Sequence[Mark]:
        """The boundaries of the open piece's body it may be closed at instead (`rollback`)."""
        return self._marks

    @property
    def pieces(self) -> Sequence[Piece]:
        """The pieces closed so far."""
        return self._pieces

    @property
    def counts(self) -> SplitCounts:
        """What the pieces so far count."""
        counts = SplitCounts()
        for name, value in zip(TALLY, self._tally):
            setattr(counts, name, value)
        return counts

    # -- the body, a message at a time ---------------------------------------------------------------------------
    def start_message(self, *, prompts: bool, follows_results: bool) -> None:
        """A message is about to be added. A user message (`prompts`) prompts what follows and is whole so far; a
        message that follows no tool result answers none (or opens a run of results), whose results are then whole
        so far. A result or answer after a result keeps what the run so far left."""
        if prompts:
            self._prompt_whole = True
        if prompts or not follows_results:
            self._results_whole = True

    def add_whole(self, index: int, lo: int, hi: int, *, zero_first: bool, labels: SpanLabels | None = None) -> None:
        """The whole message ids[lo:hi], `index` in its conversation; marks the boundary before it in a body.
        `labels`: its LabelPrefix.span, where the caller has it already (spans.MessageTable)."""
        if self._has_body:
            self._marks.append(Mark(index, len(self._ids), self._length, self._trained, self._prompt_whole,
                                    self._results_whole, tuple(self._tally), self._view))
        self._msg_whole = self._has_body = True
        self.add(lo, hi, zero_first=zero_first, labels=labels)

    def add_shortened_message(self, lo: int, hi: int, head: int, room: int, *, tool: bool, zero_first: bool) -> None:
        """An untrained message of the body (a long question, a long tool result) that cannot fit whole: its header,
        start and end within `room` (`add_shortened`). The labels it prompts (`tool`: the turn that answers it) are
        then incomplete."""
        self._msg_whole = False
        self.add_shortened(lo, hi, head, room, zero=False, zero_first=zero_first)
        if tool:
            self._results_whole = False
        else:
            self._prompt_whole = False
        self._has_body = True

    def start_cut(self, lo: int, head: int, *, zero_first: bool) -> None:
        """A turn cut across pieces (one exchange split) starts in this piece: its header ids[lo:lo+head]; add its
        content with `add` and close, `resume_cut` in the next piece, `end_cut` with its last part."""
        self._tally[6] += 1  # exchanges_split
        self._msg_whole = True
        self.add(lo, lo + head, zero_first=zero_first)

    def resume_cut(self, lo: int, head: int, pos: int, before: int) -> None:
        """A piece that continues a turn cut at `pos`: the turn's header ids[lo:lo+head] and up to `before` tokens of
        its text right before the cut, masked. The labels that follow are not in a whole message."""
        self.add(lo, lo + head, zero=True)
        if before > 0:
            self.add_end_of(lo + head, pos, before, zero=True)
        self._msg_whole = False

    def end_cut(self, lo: int, hi: int) -> None:
        """The last part ids[lo:hi] of a turn cut across pieces."""
        self.add(lo, hi)
        self._has_body = True

    def add_turn_end(self, lo: int) -> None:
        """The token at `lo`, the first of the next message, ends the open piece's last turn (a role token; GLM's
        next role token): the piece trains it as its last label."""
        self._msg_whole = True
        self.add(lo, lo + 1)

    # -- context, masked -----------------------------------------------------------------------------------------
    def reopen(self, *, results_whole: bool) -> None:
        """A new piece's context follows: its prompt is whole unless `add_context` shortens it; `results_whole`
        whether the tool results its first turn answers are all among the context."""
        self._prompt_whole = True
        self._results_whole = results_whole

    def add_head(self, lo: int, hi: int, room: int, *, zero: bool) -> None:
        """The conversation's head ids[lo:hi] within `room`: whole, or its first token, start and end (or its first
        token alone where not even a marker fits)."""
        if room >= hi - lo:
            self.add(lo, hi, zero=zero)
        elif not self.add_shortened(lo, hi, 1, room, zero=zero):
            self.add(lo, lo + 1, zero=zero)

    def add_context(self, lo: int, hi: int, head: int, room: int, *, prompt: bool) -> bool:
        """The message ids[lo:hi] repeated as context (masked) within `room`: whole, or shortened (`add_shortened`;
        the piece's `prompt` is then not whole). Returns False where not even its header and a token fit."""
        if hi - lo <= room:
            self.add(lo, hi, zero=True)
            return True
        added = self.add_shortened(lo, hi, head, room, zero=True)
        if prompt:
            self._prompt_whole = False
        return added

    # -- spans of the batch --------------------------------------------------------------------------------------
    def add(self, lo: int, hi: int, *, zero: bool = False, zero_first: bool = False,
            labels: SpanLabels | None = None) -> None:
        """Append ids[lo:hi]; `zero` masks it all (copied context), `zero_first` masks its first token
        (a role token whose turn-end label the previous piece already trained; a piece's first token).
        `labels`: the span's LabelPrefix.span, where the caller has it already."""
        if hi <= lo:
            return
        flags = None
        if zero:
            flags = np.zeros(hi - lo, np.uint8)
        else:
            prompted, trained, answers, first, first_prompted, first_answers = labels or self.prefix.span(lo, hi)
            if first and (zero_first or not self._length):
                flags = self.batch.flags[lo:hi].copy()
                flags[0] = 0
                prompted, trained, answers = prompted - first_prompted, trained - 1, answers - first_answers
            if trained:
                self._count_labels(prompted, answers, trained)
        self._append(lo, hi, flags)

    def _append(self, lo: int, hi: int, flags: np.ndarray | None) -> None:
        """Append ids[lo:hi] with `flags`, or (None) the batch's own flags: then as the pending view (`_view`), widened
        where that one ends at lo."""
        view = self._view
        if flags is not None:
            self._flush()
            self._ids.append(self.batch.ids[lo:hi])
            self._flags.append(flags)
        elif view[1] == lo:
            self._view = (view[0], hi)
        else:
            self._flush()
            self._view = (lo, hi)
        self._length += hi - lo

    def _flush(self) -> None:
        """Slice the pending view (`_view`) into the piece's parts."""
        lo, hi = self._view
        if lo >= 0:
            self._ids.append(self.batch.ids[lo:hi])
            self._flags.append(self.batch.flags[lo:hi])
            self._view = (-1, -1)

    def _count_labels(self, prompted: int, answers: int, trained: int) -> None:
        """Count the trained labels of a span added to the piece: complete where their prompt (and tool results)
        are whole in the piece, whole where their own message is."""
        tally = self._tally  # in TALLY's order
        tally[0] += prompted
        tally[3] += answers
        if self._prompt_whole and self._results_whole:
            tally[1] += prompted
            tally[4] += answers
        if self._msg_whole:
            tally[2] += trained
            tally[5] += answers
        self._trained += trained

    def add_marker(self, omitted: int) -> None:
        ids = self.marker(omitted) if self.marker else []
        if ids:
            self._flush()
            self._ids.append(np.asarray(ids, TOKEN_ID_DTYPE))
            self._flags.append(np.zeros(len(ids), np.uint8))
            self._length += len(ids)

    def add_end_of(self, lo: int, hi: int, room: int, *, zero: bool) -> int:
        """As much of the end of ids[lo:hi] as fits in `room`, after a marker when some is left out.

        Returns the tokens left out.
        """
        content = hi - lo
        marker = len(self.marker(content)) if self.marker and room < content else 0
        if room < marker + 1:
            marker = 0
        keep = min(room - marker, content)
        while marker and self.marker and len(self.marker(content - keep)) > room - keep and keep > 0:
            keep -= 1  # the marker for the real count came out longer than the one it was sized by
        if marker:
            self.add_marker(content - keep)
        self.add(hi - keep, hi, zero=zero)
        return content - keep

    def add_shortened(self, lo: int, hi: int, head: int, room: int, *, zero: bool, zero_first: bool = False) -> bool:
        """The message ids[lo:hi]: its `head` header tokens, then as much of its content as fits in `room`: the
        start and the end of the content with a marker saying how many tokens were left out between them
        (`add_middle_of`). Returns False (and adds nothing) when not even the header and one token fit."""
        if room < head + min(hi - lo - head, 1):
            return False
        self.add(lo, lo + head, zero=zero, zero_first=zero_first)
        self.add_middle_of(lo + head, hi, room - head, zero=zero)
        self._tally[7] += 1  # prompts_shortened
        return True

    def add_middle_of(self, lo: int, hi: int, room: int, *, zero: bool) -> int:
        """ids[lo:hi] within `room`: its first tokens (`start_share` of what is kept), a marker, and its last tokens.

        A long prompt usually opens with the instruction and closes with the question; keeping both ends keeps
        both. Returns the tokens left out.
        """
        content = hi - lo
        if content <= room:
            self.add(lo, hi, zero=zero)
            return 0
        marker = len(self.marker(content)) if self.marker else 0
        if room < marker + 1:
            return self.add_end_of(lo, hi, room, zero=zero)  # the marker does not fit: the end alone, as before
        keep = room - marker
        while self.marker and len(self.marker(content - keep)) > room - keep and keep > 0:
            keep -= 1  # the marker for the real count came out longer than the one it was sized by
        start = int(keep * self.start_share)
        self.add(lo, lo + start, zero=zero)
        self.add_marker(content - keep)
        self.add(hi - (keep - start), hi, zero=zero)
        return content - keep

    # -- closing -------------------------------------------------------------------------------------------------
    def rollback(self, index: int) -> None:
        """Back to the mark before message `index`, as if it and what followed had not been added."""
        mark = next(mark for mark in self._marks if mark.message == index)
        del self._ids[mark.parts :], self._flags[mark.parts :]
        self._view = mark.view  # pending then, whether widened or sliced since
        self._length, self._trained, self._prompt_whole = mark.length, mark.trained, mark.prompt_whole
        self._results_whole = mark.results_whole
        self._tally = list(mark.tally)

    def close(self) -> None:
        """Close the open piece; the next one starts empty."""
        self._flush()
        self._pieces.append(Piece(self._ids, self._flags, self._length))
        self._ids, self._flags, self._marks, self._length, self._trained, self._has_body = [], [], [], 0, 0, False
        self._view = (-1, -1)

    def finish(self) -> tuple[list[Piece], SplitCounts]:
        """Close the last piece: the conversation's pieces, and its counts as one conversation split into them."""
        self.close()
        counts = self.counts
        counts.conversations_split, counts.pieces_split = 1, len(self._pieces)
        return self._pieces, counts

