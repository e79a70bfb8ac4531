"""The cut chooser: where to close a piece that the next message does not fit, and where to cut inside a turn.

Of the last boundaries that fit, it takes the one whose hole at the end of the row the batch's free short
pieces (`FillerPool`) fill best, and reserves those pieces; a trained turn is cut to fill a row only under
`turn_cut` or when the piece would otherwise train nothing.

A turn longer than a row is never cut inside a tool call (`SafeCuts`, from each token's text), and with
`--cut-at-lines` it is cut at a safe boundary: after a line, else after a sentence, else after any token, within
the last SAFE_WINDOW of the room (by default it is cut where the room ends, as earlier outputs were). A tool call
runs from a
tag that names a tool call or function (`<tool_call>`, `<|tool_call_begin|>`, `[TOOL_CALLS]`, ...) to its closing
tag, or, without one, through the JSON that follows it. Where a tool call covers the whole window the cut moves
before it; only a tool call longer than the room is cut inside (after one of its lines where it has one).
"""

from __future__ import annotations

import bisect
import functools
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from packsft.config import DEFAULT_TURN_CUT
from packsft.pack.context import ContextPlanner
from packsft.pack.pieces import Mark
from packsft.pack.spans import MessageSpans
from packsft.render.tokenizer import TokenTexts

# How many message boundaries before the last one that fits are considered when closing a piece.
# Measured on ShareGPT (8 shards, GPT-2, L=2048): 1 saves 1.3% of rows over the last boundary; looking
# further back moves more messages into later pieces, whose repeated context costs more than it fills.
LOOKBACK = 1
# How many whole conversations may fill one hole when judging a cut.
FILLERS_PER_HOLE = 3
# A cut inside a turn moves back to a safe boundary by at most this share of the room (what it gives up is filled
# by the continuation, one more piece at worst).
SAFE_WINDOW = 0.25
# A tag that opens or closes a tool call in any template family: its name mentions a tool call or a function.
TOOL_TAG = re.compile(r"<[|/]*[^<>\n]{0,40}?(?:tool[_▁ ]?calls?|function)[^<>\n]{0,40}?>|\[/?TOOL_CALLS\]", re.I)
LOOKAHEAD = 4096  # tokens read past a cut's room to find where a tool call open there closes
SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s*$")


class SafeCuts:
    """Where a long turn may be cut, read from the text of its tokens: `texts()` gives the text of every id, read
    once, at the first long turn (building it costs a pass over the vocabulary)."""

    def __init__(self, texts: Callable[[], TokenTexts], at_lines: bool = True) -> None:
        self._texts = texts
        self.at_lines = at_lines  # False: cut where the room ends unless that is inside a tool call

    @functools.cached_property
    def texts(self) -> TokenTexts:
        return self._texts()

    def tool_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tool calls in `text`: an opening tag to its closing tag, or through the JSON
        that follows an opening tag without one (to the end of the text if that JSON does not close)."""
        spans: list[tuple[int, int]] = []
        tags = list(TOOL_TAG.finditer(text))
        for k, tag in enumerate(tags):
            name = tag.group(0)
            if name.startswith("</") or "end" in name.lower() or (spans and tag.start() < spans[-1][1]):
                continue
            close = next((t for t in tags[k + 1 :] if t.group(0).startswith("</") or "end" in t.group(0).lower()), None)
            spans.append((tag.start(), close.end() if close else _json_end(text, tag.end())))
        return spans

    def cut(self, ids: np.ndarray, room: int) -> int:
        """Tokens of `ids` (a turn's content from the last cut on) to keep before cutting, at most `room`."""
        if not self.at_lines and not self._may_cut_a_tool_call(ids, room):
            return room
        # Read past the room, so that a tool call open at the room's end finds its closing tag.
        texts = self.texts.texts_of(ids[: room + LOOKAHEAD])
        ends = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))  # character offset after each token
        spans = self.tool_spans("".join(texts))
        if not self.at_lines and not any(a < ends[room - 1] < b for a, b in spans):
            return room
        lowest = max(int(room * (1 - SAFE_WINDOW)), 1)
        inside = [any(a < ends[k - 1] < b for a, b in spans) for k in range(lowest, room + 1)] if spans else \
            [False] * (room + 1 - lowest)
        lines = [not bad and texts[k - 1].endswith("\n") for k, bad in zip(range(lowest, room + 1), inside)]
        sentences = [not bad and bool(SENTENCE_END.search(texts[k - 1])) and (texts[k - 1][-1:].isspace() or
                     texts[k][:1].isspace()) for k, bad in zip(range(lowest, room + 1), inside)]
        for allowed in (lines, sentences, [not bad for bad in inside]):
            if any(allowed):
                return lowest + max(j for j, ok in enumerate(allowed) if ok)
        # A tool call covers the window: cut before it where the piece holds anything before it, else (a tool call
        # longer than the room) after one of its lines.
        span_start = next(a for a, b in spans if a < ends[lowest - 1] < b)
        before = int(np.searchsorted(ends, span_start, side="right"))  # tokens that end at or before the call
        if before >= 1:
            return before
        within = [texts[k - 1].endswith("\n") for k in range(lowest, room + 1)]
        return lowest + max(j for j, ok in enumerate(within) if ok) if any(within) else room

    def _may_cut_a_tool_call(self, ids: np.ndarray, room: int) -> bool:
        """False where no tool call can be open at the room's end: no tag can open before it (every tag starts with
        '<' or '[') or none is read at all. Half the turns are cut so, reading no text (`_first_tag_start`). A tag
        starts at or after the first token that holds '<' or '[': the text before that token is not read."""
        first = self._first_tag_start(ids[:room])
        if first < 0:
            return False
        return TOOL_TAG.search("".join(self.texts.texts_of(ids[first : room + LOOKAHEAD]))) is not None

    @functools.cached_property
    def _tag_starts(self) -> np.ndarray:
        """Per id (and one past the vocabulary, an id outside it): 1 where its text holds '<' or '[', 0 where not,
        -1 where not read yet. One array per TokenTexts (`_TAG_STARTS`), kept across the units of a process."""
        starts = _TAG_STARTS.get(self.texts)
        if starts is None:
            starts = _TAG_STARTS[self.texts] = np.full(len(self.texts) + 1, -1, np.int8)
            starts[-1] = 0  # TokenTexts reads an id outside the vocabulary as ""
        return starts

    def _first_tag_start(self, ids: np.ndarray) -> int:
        """The index of the first of `ids` whose text holds '<' or '[', or -1: array lookups where every id was read
        before (the text of a cut's thousands of tokens, joined, took a tenth of the split of a ShareGPT unit)."""
        starts = self._tag_starts
        ids = np.minimum(ids, len(starts) - 1)
        seen = starts[ids]
        if (seen < 0).any():
            new = np.unique(ids[seen < 0])
            starts[new] = ["<" in text or "[" in text for text in self.texts.texts_of(new)]
            seen = starts[ids]
        first = int(np.argmax(seen > 0)) if len(seen) else 0
        return first if len(seen) and seen[first] > 0 else -1


# Per TokenTexts (one a tokenizer and process: render.tokenizer.token_texts), which of its ids hold '<' or '['
# (SafeCuts._tag_starts): a unit's SafeCuts is new, and read the texts of the ids its cuts met again (with the tag
# search from the first such token: the cuts of a ShareGPT unit, GPT-2, 13-14 -> 10 ms).
_TAG_STARTS: weakref.WeakKeyDictionary[TokenTexts, np.ndarray] = weakref.WeakKeyDictionary()


def _json_end(text: str, start: int) -> int:
    """Where the JSON value that starts at or after `start` ends (bracket depth, strings skipped); len(text) if
    it does not close."""
    depth, quoted, escaped = 0, False, False
    for at in range(start, len(text)):
        char = text[at]
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth <= 0:
                return at + 1
    return len(text)


class FillerPool:
    """Lengths of the pieces still free to fill holes at the end of rows, as best-fit decreasing would.

    Held as the sorted distinct lengths and a count per length: the longest that fits a hole is one bisect of that
    list, where a segment tree's walk (segment_tree.py) took a dozen Python steps; a count only changes the list
    when it reaches or leaves 0 (choosing the cuts of a ShareGPT unit, GPT-2: 15.7 -> 12.2 ms)."""

    def __init__(self, lengths: np.ndarray, capacity: int) -> None:
        counts = np.bincount(np.minimum(lengths, capacity), minlength=capacity + 1)
        self.count: list[int] = counts.tolist()  # free pieces per length 0..capacity
        self.lengths: list[int] = np.flatnonzero(counts).tolist()  # the lengths some free piece has, ascending

    def add(self, length: int) -> None:
        if not self.count[length]:
            bisect.insort(self.lengths, length)
        self.count[length] += 1

    def take(self, lengths: list[int]) -> None:
        for length in lengths:
            self.count[length] -= 1
            if not self.count[length]:
                del self.lengths[bisect.bisect_left(self.lengths, length)]

    def fill(self, hole: int) -> list[int]:
        """The pieces best-fit would put into a hole of this size (longest that fits, repeatedly); takes none.

        The lengths it chooses never grow (the next is at most the hole that the last left, which no longer length
        fits), so each is looked for among the lengths up to the last, that last one left out once all its free
        pieces are chosen."""
        lengths, count = self.lengths, self.count
        chosen: list[int] = []
        end = len(lengths)  # lengths[:end] may still be chosen
        while hole > 0 and len(chosen) < FILLERS_PER_HOLE:
            k = bisect.bisect_right(lengths, hole, 0, end) - 1
            if k < 0 or not lengths[k]:
                break
            length = lengths[k]
            chosen.append(length)
            hole -= length
            end = k + 1 if chosen.count(length) < count[length] else k
        return chosen


@dataclass
class CutChooser:
    """Where one conversation's pieces close; `pool` (None: always the last boundary) is shared by the batch."""

    spans: MessageSpans
    planner: ContextPlanner
    turn_cut: int = DEFAULT_TURN_CUT
    pool: FillerPool | None = None
    safe: SafeCuts | None = None  # None: a long turn is cut where the room ends

    def cuts_turn(self, gap: int, piece_trained: int) -> bool:
        """Whether to fill the row's last `gap` tokens with the start of a trained turn rather than close before
        it: only under `turn_cut` N (a gap of N or more), or rather than close a piece that trains nothing
        (its context would only be repeated)."""
        return bool(gap > 0 and ((self.turn_cut and gap >= self.turn_cut) or not piece_trained))

    def choose_close(self, i: int, length: int, marks: Sequence[Mark]) -> int:
        """The message before which to close the open piece of `length` tokens that message i does not fit:
        of the last boundaries that fit, the one whose hole the free short pieces fill best (ties: the
        latest); then those pieces are reserved.

        Boundaries whose next piece would have to shorten its question, or whose piece would train
        nothing, are not considered.
        """
        if self.pool is None:
            return i
        candidates = [(i, length)] + [
            (mark.message, mark.length) for mark in reversed(marks[-LOOKBACK:])
            if mark.trained and not self.planner.would_shorten(mark.message)
        ]
        best = None
        for j, kept in candidates:
            hole = self.spans.capacity - kept - int(self.spans.carried(self.spans.msgs[j]))
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
        """Where to cut ids[pos:hi] within `room`: at a safe boundary (`SafeCuts`), unless what follows the cut trains nothing (a chat
        template's separator after the end-of-turn). Then the cut moves before the turn's last label, so the
        continuation, which repeats the turn's header and text as context, trains that label: a repeated
        turn with no label in its piece would read like a turn the template never rendered (verify)."""
        flags = self.spans.batch.flags
        if flags[pos + room : hi].any():
            if self.safe is None:
                return room
            safe = self.safe.cut(self.spans.batch.ids[pos:hi], room)
            return safe if flags[pos + safe : hi].any() else room
        labels = np.flatnonzero(flags[pos : pos + room])
        return int(labels[-1]) if len(labels) and labels[-1] > 0 else room
