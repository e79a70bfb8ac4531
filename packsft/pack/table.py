"""What `split_long` returns: the pieces of a batch as flat arrays (`PieceTable`) and what splitting did
(`SplitCounts`); and the `Collector` that gathers both, slicing the conversations that fit instead of copying them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Collector:
    """The pieces made so far, as lists of arrays joined once at the end."""

    batch: RenderedBatch
    prefix: LabelPrefix
    ids: list[np.ndarray] = field(default_factory=list)
    flags: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    conv: list[np.ndarray] = field(default_factory=list)

    def add_run(self, first: int, stop: int) -> SplitCounts:
        """Conversations first..stop-1 fit whole: one contiguous slice of the batch, no copy per piece."""
        if first >= stop:
            return SplitCounts()
        offsets = self.batch.conv_offsets
        lo, hi = int(offsets[first]), int(offsets[stop])
        self.ids.append(self.batch.ids[lo:hi])
        self.flags.append(self.batch.flags[lo:hi])
        self.lengths.append(self.batch.lengths[first:stop])
        self.conv.append(np.arange(first, stop, dtype=np.int64))
        # A piece's first token is never a label (it starts the segment).
        prompted = int((self.prefix.prompted[offsets[first + 1 : stop + 1]] - self.prefix.prompted[offsets[first:stop] + 1]).sum())
        trained = int((self.prefix.trained[offsets[first + 1 : stop + 1]] - self.prefix.trained[offsets[first:stop] + 1]).sum())
        answers = int((self.prefix.answers[offsets[first + 1 : stop + 1]] - self.prefix.answers[offsets[first:stop] + 1]).sum())
        return SplitCounts(prompted_labels=prompted, prompted_labels_complete=prompted, turn_labels_whole=trained,
                           answer_labels=answers, answer_labels_complete=answers, answer_labels_whole=answers)

    def add_piece(self, c: int, ids: np.ndarray, flags: np.ndarray) -> None:
        self.ids.append(ids)
        self.flags.append(flags)
        self.lengths.append(np.asarray([len(ids)], np.int64))
        self.conv.append(np.asarray([c], np.int64))

    def add_truncated(self, c: int, capacity: int) -> SplitCounts:
        """The first L+1 tokens of conversation c; every label kept starts in its own message's piece."""
        start = int(self.batch.conv_offsets[c])
        self.add_piece(c, self.batch.ids[start : start + capacity], self.batch.flags[start : start + capacity])
        prompted, trained = self.prefix.labels(start + 1, start + capacity)
        answers = self.prefix.answer_labels(start + 1, start + capacity)
        return SplitCounts(conversations_truncated=1, truncated_or_dropped=[c], prompted_labels=prompted,
                           prompted_labels_complete=prompted, turn_labels_whole=trained, answer_labels=answers,
                           answer_labels_complete=answers, answer_labels_whole=answers)

    def table(self) -> PieceTable:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        return PieceTable(
            ids=np.concatenate(self.ids) if self.ids else np.zeros(0, TOKEN_ID_DTYPE),
            flags=np.concatenate(self.flags) if self.flags else np.zeros(0, np.uint8),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            conv=np.concatenate(self.conv) if self.conv else np.zeros(0, np.int64),
        )
