"""The cut chooser: where to close a piece that the next message does not fit, and where to cut inside a turn.

Of the last boundaries that fit, it takes the one whose hole at the end of the row the batch's free short
pieces (`FillerPool`) fill best, and reserves those pieces; a trained turn is cut to fill a row only under
`turn_cut` or when the piece would otherwise train nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.config import DEFAULT_TURN_CUT
from packsft.pack.context import ContextPlanner
from packsft.pack.pieces import Mark
from packsft.pack.segment_tree import LengthTree
from packsft.pack.spans import MessageSpans

# How many message boundaries before the last one that fits are considered when closing a piece.
# Measured on ShareGPT (8 shards, GPT-2, L=2048): 1 saves 1.3% of rows over the last boundary; looking
# further back moves more messages into later pieces, whose repeated context costs more than it fills.
LOOKBACK = 1
# How many whole conversations may fill one hole when judging a cut.
FILLERS_PER_HOLE = 3


class FillerPool:
    """Lengths of the pieces still free to fill holes at the end of rows, as best-fit decreasing would."""

    def __init__(self, lengths: np.ndarray, capacity: int) -> None:
        self.free = LengthTree(capacity, lengths)

    def add(self, length: int) -> None:
        self.free.add(length, 1)

    def take(self, lengths: list[int]) -> None:
        for length in lengths:
            self.free.add(length, -1)

    def fill(self, hole: int) -> list[int]:
        """The pieces best-fit would put into a hole of this size (longest that fits, repeatedly)."""
        chosen: list[int] = []
        while hole > 0 and len(chosen) < FILLERS_PER_HOLE:
            length = self.free.largest_at_most(hole)
            if not length:
                break
            self.free.add(length, -1)
            chosen.append(length)
            hole -= length
        for length in chosen:
            self.free.add(length, 1)
        return chosen


@dataclass
class CutChooser:
    """Where one conversation's pieces close; `pool` (None: always the last boundary) is shared by the batch."""

    spans: MessageSpans
    planner: ContextPlanner
    turn_cut: int = DEFAULT_TURN_CUT
    pool: FillerPool | None = None

    def cuts_turn(self, gap: int, piece_trained: int) -> bool:
        """Whether to fill the row's last `gap` tokens with the start of a trained turn rather than close before
        it: only under `turn_cut` N (a gap of N or more), or rather than close a piece that trains nothing
        (its context would only be repeated)."""
        return bool(gap > 0 and ((self.turn_cut and gap >= self.turn_cut) or not piece_trained))

    def choose_close(self, i: int, length: int, marks: list[Mark]) -> int:
        """The message before which to close the open piece of `length` tokens that message i does not fit:
        of the last boundaries that fit, the one whose hole the free short pieces fill best (ties: the
        latest); then those pieces are reserved.

        Boundaries whose next piece would have to shorten its question, or whose piece would train
        nothing, are not considered.
        """
        if self.pool is None:
            return i
        closing = int(self.spans.role_tokens)
        candidates = [(i, length)] + [
            (mark.index, mark.length) for mark in reversed(marks[-LOOKBACK:])
            if mark.trained and not self.planner.would_shorten(mark.index)
        ]
        best = None
        for j, kept in candidates:
            hole = self.spans.capacity - kept - closing
            fillers = self.pool.fill(hole)
            left = hole - sum(fillers) + self.planner.length(j)
            if best is None or left < best[0]:
                best = (left, j, fillers)
        assert best is not None
        _, j, fillers = best
        self.pool.take(fillers)
        return j

    def reserve_fillers(self, length: int) -> None:
        """A finished piece: longer than half a row, it takes fillers from the pool; else it is one."""
        if self.pool is None:
            return
        if 2 * length > self.spans.capacity:
            self.pool.take(self.pool.fill(self.spans.capacity - length))
        else:
            self.pool.add(length)

    def cut_before_untrained_rest(self, pos: int, room: int, hi: int) -> int:
        """Where to cut ids[pos:hi] within `room`: there, unless what follows the cut trains nothing (a chat
        template's separator after the end-of-turn). Then the cut moves before the turn's last label, so the
        continuation, which repeats the turn's header and text as context, trains that label: a repeated
        turn with no label in its piece would read like a turn the template never rendered (verify)."""
        flags = self.spans.batch.flags
        if flags[pos + room : hi].any():
            return room
        labels = np.flatnonzero(flags[pos : pos + room])
        return int(labels[-1]) if len(labels) and labels[-1] > 0 else room
