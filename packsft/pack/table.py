"""What `split_long` returns: the pieces of a batch as flat arrays (`PieceTable`) and what splitting did
(`SplitCounts`); and the `Collector` that gathers both, slicing the conversations that fit instead of copying them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from packsft.pack.labels import LabelPrefix
from packsft.render.batch import RenderedBatch
from packsft.render.tokenizer import TOKEN_ID_DTYPE
from packsft.stats import LabelContext, SplitTotals


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


class Piece(NamedTuple):
    """A piece of a split conversation as the spans it was built of (pieces.PieceBuilder): joined only with all the
    batch's pieces, once (`Collector.table`)."""

    ids: list[np.ndarray]
    flags: list[np.ndarray]
    length: int


@dataclass
class SplitCounts(SplitTotals, LabelContext):
    """What splitting did, and which labels kept their context (stats.SplitTotals + stats.LabelContext): plain
    counters that add (`a + b`). Each conversation's splitter returns its own (pieces.PieceBuilder counts them)."""

    # The splitter counts these for every conversation (stats leaves them None for manifests of earlier versions).
    turn_labels_whole: int = 0
    answer_labels: int = 0
    answer_labels_complete: int = 0
    answer_labels_whole: int = 0
    truncated_or_dropped: list[int] = field(default_factory=list)  # by index; the policy says which of the two

    @staticmethod
    def total(parts: list[SplitCounts]) -> SplitCounts:
        """The sum of `parts` (one per long conversation), field by field: `sum()` would add them a pair at a time,
        a new SplitCounts each, of every field (a thousandth of a second per hundred conversations)."""
        total = SplitCounts()
        for name in (f.name for f in fields(SplitCounts)):
            values = [getattr(part, name) for part in parts]
            if name == "truncated_or_dropped":
                total.truncated_or_dropped = [index for value in values for index in value]
            else:  # a counter that is None was never counted (stats.Counts adds it so)
                counted = [value for value in values if value is not None]
                setattr(total, name, sum(counted) if counted else None)
        return total


@dataclass
class Collector:
    """The pieces made so far, as lists of arrays joined once at the end."""

    batch: RenderedBatch
    prefix: LabelPrefix
    ids: list[np.ndarray] = field(default_factory=list)
    flags: list[np.ndarray] = field(default_factory=list)
    # Per piece, in runs: an array per run of whole conversations, a list per split one (two arrays a conversation
    # cost 2 us each; `table` joins them all at once).
    lengths: list[np.ndarray | list[int]] = field(default_factory=list)
    conv: list[np.ndarray | list[int]] = field(default_factory=list)
    _conv_lengths: np.ndarray = field(init=False)  # the batch's, read once (each is a np.diff of its offsets)

    def __post_init__(self) -> None:
        self._conv_lengths = self.batch.lengths

    def add_run(self, first: int, stop: int) -> None:
        """Conversations first..stop-1 fit whole: one contiguous slice of the batch, no copy per piece."""
        if first >= stop:
            return
        offsets = self.batch.conv_offsets
        lo, hi = int(offsets[first]), int(offsets[stop])
        self.ids.append(self.batch.ids[lo:hi])
        self.flags.append(self.batch.flags[lo:hi])
        self.lengths.append(self._conv_lengths[first:stop])
        self.conv.append(np.arange(first, stop, dtype=np.int64))

    def whole_counts(self, fits: np.ndarray) -> SplitCounts:
        """The labels of the conversations that fit whole (`fits`, by conversation; `add_run` adds them): every
        label keeps its context."""
        offsets = self.batch.conv_offsets
        starts, ends = offsets[:-1][fits] + 1, offsets[1:][fits]  # a piece's first token is never a label
        prompted, trained, answers = (int((prefix[ends] - prefix[starts]).sum(dtype=np.int64))
                                      for prefix in (self.prefix.prompted, self.prefix.trained, self.prefix.answers))
        return SplitCounts(prompted_labels=prompted, prompted_labels_complete=prompted, turn_labels_whole=trained,
                           answer_labels=answers, answer_labels_complete=answers, answer_labels_whole=answers)

    def add_pieces(self, c: int, pieces: list[Piece]) -> None:
        """The pieces of conversation c, each as its parts."""
        for piece in pieces:
            self.ids += piece.ids
            self.flags += piece.flags
        self.lengths.append([piece.length for piece in pieces])
        self.conv.append([c] * len(pieces))

    def add_truncated(self, c: int, capacity: int) -> SplitCounts:
        """The first L+1 tokens of conversation c; every label kept starts in its own message's piece."""
        start = int(self.batch.conv_offsets[c])
        ids, flags = self.batch.ids[start : start + capacity], self.batch.flags[start : start + capacity]
        self.add_pieces(c, [Piece([ids], [flags], len(ids))])
        prompted, trained = self.prefix.labels(start + 1, start + capacity)
        answers = self.prefix.answer_labels(start + 1, start + capacity)
        return SplitCounts(conversations_truncated=1, truncated_or_dropped=[c], prompted_labels=prompted,
                           prompted_labels_complete=prompted, turn_labels_whole=trained, answer_labels=answers,
                           answer_labels_complete=answers, answer_labels_whole=answers)

    def table(self) -> PieceTable:
        lengths = np.concatenate(self.lengths, dtype=np.int64) if self.lengths else np.zeros(0, np.int64)
        return PieceTable(
            ids=np.concatenate(self.ids) if self.ids else np.zeros(0, TOKEN_ID_DTYPE),
            flags=np.concatenate(self.flags) if self.flags else np.zeros(0, np.uint8),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            conv=np.concatenate(self.conv, dtype=np.int64) if self.conv else np.zeros(0, np.int64),
        )
