"""The piece builder: one conversation's pieces, a span of the batch at a time, counting the labels they keep.

Before each whole message after the first of a piece's body it records a `Mark`, the state to return to when
the cut chooser (`cuts.py`) closes the piece at that earlier boundary instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from packsft.pack.labels import LabelPrefix
from packsft.pack.table import SplitCounts
from packsft.render.batch import RenderedBatch
from packsft.render.tokenizer import TOKEN_ID_DTYPE

Marker = Callable[[int], list[int]]
Piece = tuple[np.ndarray, np.ndarray]  # (ids, flags)
# With --prompt-start-share (default 0: the end only), a message shortened to fit keeps that share of what fits from
# its start, the rest from its end: the end usually asks the question and the start gives the instruction, which is
# usually the shorter part; 0.25 keeps both.


@dataclass(frozen=True)
class Mark:
    """The state before a whole message was added to a piece: a place the piece may be closed instead."""

    index: int  # position in the conversation's message list
    parts: int
    length: int
    trained: int
    prompt_whole: bool
    results_whole: bool
    counts: SplitCounts


@dataclass
class PieceBuilder:
    """The open piece as (ids, flags) parts of the batch, the pieces closed before it, and what they count."""

    batch: RenderedBatch
    prefix: LabelPrefix
    marker: Marker | None = None
    start_share: float = 0.0  # of a shortened message's kept tokens, the share from its start (--prompt-start-share)
    counts: SplitCounts = field(default_factory=SplitCounts)
    pieces: list[Piece] = field(default_factory=list, init=False)
    parts: list[Piece] = field(default_factory=list, init=False)
    marks: list[Mark] = field(default_factory=list, init=False)
    length: int = field(default=0, init=False)  # tokens in the open piece
    trained: int = field(default=0, init=False)  # trained labels in the open piece
    has_body: bool = field(default=False, init=False)  # the open piece holds more than copied context
    prompt_whole: bool = field(default=True, init=False)  # the prompting user message is wholly in the piece
    results_whole: bool = field(default=True, init=False)  # ... and so are the tool results the turn answers
    msg_whole: bool = field(default=True, init=False)  # the message being added started in this piece

    def add(self, lo: int, hi: int, *, zero: bool = False, zero_first: bool = False) -> None:
        """Append ids[lo:hi]; `zero` masks it all (copied context), `zero_first` masks its first token
        (a role token whose turn-end label the previous piece already trained; a piece's first token)."""
        if hi <= lo:
            return
        flags = self.batch.flags[lo:hi]
        if zero:
            flags = np.zeros(hi - lo, np.uint8)
        else:
            prompted, trained = self.prefix.labels(lo, hi)
            answers = self.prefix.answer_labels(lo, hi)
            if (zero_first or not self.length) and flags[0]:
                flags = flags.copy()
                flags[0] = 0
                first_prompted, _ = self.prefix.labels(lo, lo + 1)
                prompted, trained = prompted - first_prompted, trained - 1
                answers -= self.prefix.answer_labels(lo, lo + 1)
            self.counts.add_labels(prompted, answers, trained, complete=self.prompt_whole and self.results_whole,
                                   whole=self.msg_whole)
            self.trained += trained
        self.parts.append((self.batch.ids[lo:hi], flags))
        self.length += hi - lo

    def add_marker(self, omitted: int) -> None:
        ids = self.marker(omitted) if self.marker else []
        if ids:
            self.parts.append((np.asarray(ids, TOKEN_ID_DTYPE), np.zeros(len(ids), np.uint8)))
            self.length += len(ids)

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
        self.counts.prompts_shortened += 1
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

    def add_message(self, index: int, lo: int, hi: int, *, zero_first: bool) -> None:
        """The whole message ids[lo:hi], `index` in its conversation; marks the boundary before it in a body."""
        if self.has_body:
            self.marks.append(Mark(index, len(self.parts), self.length, self.trained, self.prompt_whole,
                                   self.results_whole, self.counts.snapshot()))
        self.msg_whole = True
        self.add(lo, hi, zero_first=zero_first)
        self.has_body = True

    def rollback(self, index: int) -> None:
        """Back to the mark before message `index`, as if it and what followed had not been added."""
        mark = next(mark for mark in self.marks if mark.index == index)
        del self.parts[mark.parts :]
        self.length, self.trained, self.prompt_whole = mark.length, mark.trained, mark.prompt_whole
        self.results_whole = mark.results_whole
        self.counts = mark.counts

    def close(self) -> None:
        ids = np.concatenate([p[0] for p in self.parts])
        flags = np.concatenate([p[1] for p in self.parts])
        self.pieces.append((ids, flags))
        self.parts, self.marks, self.length, self.trained, self.has_body = [], [], 0, 0, False
