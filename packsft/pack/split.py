"""Turn rendered conversations into pieces that fit a row of L+1 tokens (`--long split|truncate|drop`).

A conversation that fits is one piece. A longer one, under `split`, is cut only at message
boundaries, and every piece after the first is re-opened with its context, re-rendered with mask 0:

    piece 1:  BOS SYS.. USR q1.. ASST a1.. USR            <- ends with the turn-end token it trains
    piece 2:  BOS SYS.. USR q1.. | ASST a2.. USR q3.. ASST a3.. EOS
              `--- context, 0 --'  `--- original flags (first role token 0: piece 1 trained it)

Where to close a piece: not always at the last message boundary that fits. That leaves holes of 1-250
tokens at the end of rows, which few whole conversations fit. Among the last `LOOKBACK` boundaries that
fit, the splitter picks the one whose hole the still-free short conversations of the batch fill best
(`FillerPool`: best-fit with up to `FILLERS_PER_HOLE` of them), and reserves those conversations.

A turn is never cut to fill a row (`turn_cut=0`, the default): the model would learn the second half
of an answer without its first half. Only a turn longer than a row is cut; each continuation is
re-opened with the question AND the immediately preceding tokens of the same turn (masked, after an
`[… N tokens omitted]` marker; up to `CONTINUATION_SHARE` of the row, within `context_share`), so every continuation label
sees the text right before it. `turn_cut=N` (N > 0) restores the old trade: cut a trained turn to fill
a row whenever a boundary cut would leave N or more tokens empty (higher fill, beheaded turns).

A question that takes more than `context_share` of a row is kept by its end, after the marker. Nothing
trainable is lost; each trained label sees its question (or its end).

Agentic traces: a tool result (TOOL_CODE) is context for the assistant turn after it. A piece that opens at a
tool result, or at the assistant turn after one, is re-opened also with the tool exchange right before it
(the run of results and the assistant turn that called them; earlier rounds are not repeated: on the
generated tool-calling corpus of BENCHMARKS.md repeating every round since the question cost 14% more rows
and lowered context completeness), masked, whole messages only (never a cut inside a tool call), the latest
first, as much as the context share leaves:

    piece 1:  BOS SYS.. USR q.. ASST <tool_call>.. USR <tool_response>.. ASST
    piece 2:  BOS SYS.. USR q.. ASST <tool_call>.. USR <tool_response>.. | ASST answer.. EOS
              `------------------------ context, 0 ------------------'

Context completeness (`prompted_labels_complete` of `prompted_labels`, the trained labels that a user
message prompts): a label is complete when its prompting user message is whole in its piece and, for a
turn that answers tool results, so is the run of tool results right before the turn. A piece that cannot
hold that run (it does not fit beside the question) leaves the turn's labels incomplete; a cut is never
moved back to a boundary whose next piece would do so.

Chat-template renderings (`mode == "chat"`) differ in two ways: a message opens with several header
tokens instead of one role token (kept whole wherever the role token is kept), and a turn's end-of-turn
tokens are the end of its own message span, so closing a piece adds nothing from the next message.

Cost: O(tokens) copies for the conversations that are cut; conversations that fit are sliced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from packsft.render.roles import SYSTEM_CODE, TOOL_CODE, USER_CODE, RenderedBatch, concat_ranges, flag_totals
from packsft.render.tokenizer import TOKEN_ID_DTYPE

# Copied context (system + prompting user message, or the text before a continuation) may take at most
# this share of a row; a longer prompt is shortened from the left (its end, where the question usually is).
CONTEXT_SHARE = 0.75
# Cut a trained turn mid-way to fill a row when a message-boundary cut would leave at least this many
# tokens empty; 0 (the default) never cuts a turn that fits in a row.
DEFAULT_TURN_CUT = 0
# The text before a cut inside a turn, repeated (masked) at the start of its continuation, takes at most
# this share of the row (and the whole context at most CONTEXT_SHARE). Measured on ShareGPT (8 shards,
# GPT-2, L=2048): 1/8 (256 tokens) costs 0.3% more rows than none; the full CONTEXT_SHARE costs 2.7%
# (continuations then add only a quarter of a row of new labels each).
CONTINUATION_SHARE = 0.125
# How many message boundaries before the last one that fits are considered when closing a piece.
# Measured on ShareGPT (8 shards, GPT-2, L=2048): 1 saves 1.3% of rows over the last boundary; looking
# further back moves more messages into later pieces, whose repeated context costs more than it fills.
LOOKBACK = 1
# How many whole conversations may fill one hole when judging a cut.
FILLERS_PER_HOLE = 3

Marker = Callable[[int], list[int]]
Piece = tuple[np.ndarray, np.ndarray]  # (ids, flags)


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
    """What splitting did; counts add (`a + b`), so each conversation's splitter returns its own."""

    conversations_truncated: int = 0
    conversations_dropped_long: int = 0
    conversations_split: int = 0
    pieces_split: int = 0  # pieces that came out of split conversations
    exchanges_split: int = 0  # single messages cut across pieces
    prompts_shortened: int = 0
    prompted_labels: int = 0  # trained labels whose turn has a prompting user message
    prompted_labels_complete: int = 0  # ... whose prompt (and tool results) are entirely inside the same piece
    turn_labels_whole: int = 0  # trained labels whose own message is in the same piece from its first token
    answer_labels: int = 0  # trained labels of turns that answer tool results
    answer_labels_complete: int = 0  # ... whose prompt and tool results are entirely inside the same piece
    answer_labels_whole: int = 0  # ... whose own message is in the same piece from its first token
    per_conv_truncated: list[int] = field(default_factory=list)

    def __add__(self, other: SplitCounts) -> SplitCounts:
        return SplitCounts(**{name: getattr(self, name) + getattr(other, name) for name in _COUNT_NAMES})

    def snapshot(self) -> SplitCounts:
        """A copy to roll back to (`dataclasses.replace` costs ~10x more, per message of every split)."""
        copy = object.__new__(SplitCounts)
        copy.__dict__.update(self.__dict__)
        copy.per_conv_truncated = list(self.per_conv_truncated)
        return copy


_COUNT_NAMES = tuple(f.name for f in fields(SplitCounts))


class FillerPool:
    """Lengths of the pieces still free to fill holes at the end of rows, as best-fit decreasing would.

    A segment tree over lengths 0..capacity answers "the longest free piece of at most x tokens" in
    O(log capacity).
    """

    def __init__(self, lengths: np.ndarray, capacity: int) -> None:
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.count = np.bincount(np.minimum(lengths, capacity), minlength=self.size).tolist()
        self.best = [-1] * (2 * self.size)  # per node: the longest length with a free piece below it
        for x, n in enumerate(self.count):
            if n:
                self.best[self.size + x] = x
        for node in range(self.size - 1, 0, -1):
            self.best[node] = max(self.best[2 * node], self.best[2 * node + 1])

    def _update(self, x: int, delta: int) -> None:
        self.count[x] += delta
        node = self.size + x
        self.best[node] = x if self.count[x] else -1
        node //= 2
        while node:
            self.best[node] = max(self.best[2 * node], self.best[2 * node + 1])
            node //= 2

    def longest_at_most(self, x: int) -> int:
        """The longest free length <= x, or -1."""
        lo, hi, found = self.size, self.size + min(x, self.size - 1) + 1, -1
        while lo < hi:
            if lo & 1:
                found, lo = max(found, self.best[lo]), lo + 1
            if hi & 1:
                hi -= 1
                found = max(found, self.best[hi])
            lo, hi = lo // 2, hi // 2
        return found

    def add(self, length: int) -> None:
        self._update(length, 1)

    def take(self, lengths: list[int]) -> None:
        for length in lengths:
            self._update(length, -1)

    def fill(self, hole: int) -> list[int]:
        """The pieces best-fit would put into a hole of this size (longest that fits, repeatedly)."""
        chosen: list[int] = []
        while hole > 0 and len(chosen) < FILLERS_PER_HOLE:
            length = self.longest_at_most(hole)
            if length <= 0:
                break
            self._update(length, -1)
            chosen.append(length)
            hole -= length
        for length in chosen:
            self._update(length, 1)
        return chosen


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


def message_starts(batch: RenderedBatch) -> np.ndarray:
    """Per token: where its own message starts (flat position). The head (BOS) belongs to the first
    message and the EOS to the last, the turn it ends; a conversation without messages starts at 0."""
    starts = np.repeat(batch.conv_offsets[:-1], batch.lengths)
    if not len(batch.msg_roles):
        return starts
    span_lens = batch.msg_ends - batch.msg_starts
    starts[concat_ranges(batch.msg_starts, span_lens)] = np.repeat(batch.msg_starts, span_lens)
    nonempty = np.diff(batch.conv_msg_offsets) > 0
    last = (batch.conv_msg_offsets[1:] - 1)[nonempty]
    tail_lens = (batch.conv_offsets[1:][nonempty] - batch.msg_ends[last])
    starts[concat_ranges(batch.msg_ends[last], tail_lens)] = np.repeat(batch.msg_starts[last], tail_lens)
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


@dataclass(frozen=True)
class _Prefix:
    """Prefix sums over the batch's tokens: labels in [lo, hi) in O(1)."""

    prompted: np.ndarray  # trained and prompted by a user message
    trained: np.ndarray  # trained
    answers: np.ndarray  # trained, in a turn that answers tool results

    @staticmethod
    def of(batch: RenderedBatch) -> _Prefix:
        return _Prefix(
            prompted=flag_totals(_prompted_flags(batch)),
            trained=flag_totals(batch.flags),
            answers=flag_totals(answer_flags(batch)),
        )

    def labels(self, lo: int, hi: int) -> tuple[int, int]:
        """(prompted, trained) labels among tokens lo..hi-1."""
        return int(self.prompted[hi] - self.prompted[lo]), int(self.trained[hi] - self.trained[lo])

    def answer_labels(self, lo: int, hi: int) -> int:
        """Labels among tokens lo..hi-1 in turns that answer tool results."""
        return int(self.answers[hi] - self.answers[lo])


def answer_flags(batch: RenderedBatch) -> np.ndarray:
    """Per token: 1 where the token is trained in a message right after a tool result (the turn that answers it;
    the EOS after a conversation's last message counts with that message)."""
    out = np.zeros(len(batch.ids), np.uint8)
    roles = batch.msg_roles
    if not len(roles) or not (roles == TOOL_CODE).any():
        return out
    after_tool = np.zeros(len(roles), bool)
    after_tool[1:] = roles[:-1] == TOOL_CODE
    counts = np.diff(batch.conv_msg_offsets)
    after_tool[batch.conv_msg_offsets[:-1][counts > 0]] = False  # a conversation's first message follows nothing
    chosen = np.flatnonzero(after_tool)
    out[concat_ranges(batch.msg_starts[chosen], batch.msg_ends[chosen] - batch.msg_starts[chosen])] = 1
    last = (batch.conv_msg_offsets[1:] - 1)[counts > 0]
    tails = last[after_tool[last]]
    if len(tails):
        conv_of = np.searchsorted(batch.conv_msg_offsets, tails, side="right") - 1
        out[concat_ranges(batch.msg_ends[tails], batch.conv_offsets[conv_of + 1] - batch.msg_ends[tails])] = 1
    return out & batch.flags


@dataclass
class _Collector:
    """The pieces made so far, as lists of arrays joined once at the end."""

    batch: RenderedBatch
    prefix: _Prefix
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
        return SplitCounts(conversations_truncated=1, per_conv_truncated=[c], prompted_labels=prompted,
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


def split_long(
    batch: RenderedBatch,
    seq_length: int,
    policy: str,
    marker: Marker | None = None,
    turn_cut: int = DEFAULT_TURN_CUT,
    context_share: float = CONTEXT_SHARE,
) -> tuple[PieceTable, SplitCounts]:
    """Cut `batch` into pieces of at most seq_length + 1 tokens.

    Args:
        policy: "split" (cut at message boundaries, re-open with context), "truncate" (keep the first
            L+1 tokens) or "drop" (discard the conversation).
        marker: token ids of the marker put where `n` tokens of a long prompt were cut away.
        turn_cut: 0 cuts inside a turn only when it alone exceeds a row; N > 0 also cuts a trained turn
            to fill a row when a boundary cut would leave N or more tokens empty (beheads turns).
        context_share: the most of a row that copied context (system + question) may take; a longer
            question is kept by its end. Higher keeps more questions whole and repeats more tokens.
    """
    capacity = seq_length + 1
    prefix = _Prefix.of(batch)
    out = _Collector(batch, prefix)
    lengths = batch.lengths
    long = np.flatnonzero(lengths > capacity).tolist()
    pool = FillerPool(lengths[lengths <= capacity], capacity) if policy == "split" and long else None
    counts, previous = SplitCounts(), 0
    for c in long:
        counts += out.add_run(previous, c)
        previous = c + 1
        if policy == "drop":
            counts += SplitCounts(conversations_dropped_long=1, per_conv_truncated=[c])
        elif policy == "truncate":
            counts += out.add_truncated(c, capacity)
        else:
            splitter = ConversationSplitter(batch, c, capacity, prefix, marker, turn_cut, context_share, pool)
            pieces, conv_counts = splitter.split()
            counts += conv_counts
            for ids, flags in pieces:
                out.add_piece(c, ids, flags)
    counts += out.add_run(previous, len(batch))
    return out.table(), counts


@dataclass(frozen=True)
class _Mark:
    """The state before a whole message was added to a piece: a place the piece may be closed instead."""

    index: int  # position in the conversation's message list
    parts: int
    length: int
    trained: int
    prompt_whole: bool
    results_whole: bool
    counts: SplitCounts


@dataclass
class ConversationSplitter:
    """Splits one conversation into pieces (see the module docstring); `split()` returns them and its counts."""

    batch: RenderedBatch
    conv: int
    capacity: int
    prefix: _Prefix
    marker: Marker | None = None
    turn_cut: int = DEFAULT_TURN_CUT
    context_share: float = CONTEXT_SHARE
    pool: FillerPool | None = None  # short pieces of the batch still free to fill holes; reserved as used
    counts: SplitCounts = field(default_factory=SplitCounts, init=False)
    pieces: list[Piece] = field(default_factory=list, init=False)
    parts: list[Piece] = field(default_factory=list, init=False)
    marks: list[_Mark] = field(default_factory=list, init=False)
    length: int = field(default=0, init=False)  # tokens in the open piece
    trained: int = field(default=0, init=False)  # trained labels in the open piece
    has_body: bool = field(default=False, init=False)  # the open piece holds more than copied context
    prompt_whole: bool = field(default=True, init=False)  # the prompting user message is wholly in the piece
    results_whole: bool = field(default=True, init=False)  # ... and so are the tool results the turn answers
    msg_whole: bool = field(default=True, init=False)  # the message being added started in this piece

    def __post_init__(self) -> None:
        b, c = self.batch, self.conv
        self.start, self.end = int(b.conv_offsets[c]), int(b.conv_offsets[c + 1])
        self.msgs = list(range(int(b.conv_msg_offsets[c]), int(b.conv_msg_offsets[c + 1])))
        self.head_end = int(b.msg_starts[self.msgs[0]]) if self.msgs else self.end
        # Role-token layout: a message's first token is its whole header and ends the previous turn.
        self.role_tokens = b.mode == "roles"

    # -- facts about messages -------------------------------------------------------------------------
    def _span(self, m: int) -> tuple[int, int]:
        return int(self.batch.msg_starts[m]), int(self.batch.msg_ends[m])

    def _header(self, m: int) -> int:
        """Tokens of message m's header, kept whole when a message is shortened or cut."""
        lo, hi = self._span(m)
        if self.role_tokens:
            return min(1, hi - lo)
        return min(max(int(self.batch.msg_headers[m]), 0), hi - lo, self.capacity // 4)

    def _tail(self, i: int) -> int:
        """What must follow message i in its piece: the EOS after the last, else the next role token."""
        return self.end - self._span(self.msgs[i])[1] if i == len(self.msgs) - 1 else int(self.role_tokens)

    def _context_budget(self) -> int:
        return int(self.capacity * self.context_share)

    # -- piece assembly -------------------------------------------------------------------------------
    def _add(self, lo: int, hi: int, *, zero: bool = False, zero_first: bool = False) -> None:
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
            complete = self.prompt_whole and self.results_whole
            self.counts.prompted_labels += prompted
            self.counts.prompted_labels_complete += prompted if complete else 0
            self.counts.turn_labels_whole += trained if self.msg_whole else 0
            self.counts.answer_labels += answers
            self.counts.answer_labels_complete += answers if complete else 0
            self.counts.answer_labels_whole += answers if self.msg_whole else 0
            self.trained += trained
        self.parts.append((self.batch.ids[lo:hi], flags))
        self.length += hi - lo

    def _add_marker(self, omitted: int) -> None:
        ids = self.marker(omitted) if self.marker else []
        if ids:
            self.parts.append((np.asarray(ids, TOKEN_ID_DTYPE), np.zeros(len(ids), np.uint8)))
            self.length += len(ids)

    def _add_end_of(self, lo: int, hi: int, room: int, *, zero: bool) -> int:
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
            self._add_marker(content - keep)
        self._add(hi - keep, hi, zero=zero)
        return content - keep

    def _add_shortened(self, m: int, room: int, *, zero: bool, zero_first: bool = False) -> bool:
        """Message m's header, a marker, and as much of the end of its content as fits in `room`.

        Returns False (and adds nothing) when not even the header and one token fit.
        """
        lo, hi = self._span(m)
        head = self._header(m)
        if room < head + min(hi - lo - head, 1):
            return False
        self._add(lo, lo + head, zero=zero, zero_first=zero_first)
        self._add_end_of(lo + head, hi, room - head, zero=zero)
        self.counts.prompts_shortened += 1
        return True

    def _close(self) -> None:
        ids = np.concatenate([p[0] for p in self.parts])
        flags = np.concatenate([p[1] for p in self.parts])
        self.pieces.append((ids, flags))
        self.parts, self.marks, self.length, self.trained, self.has_body = [], [], 0, 0, False

    def _context(self, first_msg: int, reserve: int) -> tuple[list[tuple[int, int]], bool]:
        """(message, room) of the messages that re-open a piece at `first_msg`: the system message, the
        prompting user message and the tool exchange before the turn (`_exchange`); and whether the tool
        results the piece's first turn answers are all among them.

        The context leaves at least `reserve` tokens of the row for the body; when the system and user
        messages do not both fit, the question matters more than the system message: the system message
        gets at most a quarter. The tool exchange gets what they leave.
        """
        b = self.batch
        system = next((m for m in self.msgs if m < first_msg and b.msg_roles[m] == SYSTEM_CODE), None)
        prompt = None
        if b.msg_roles[first_msg] != USER_CODE:
            prompt = next((m for m in reversed(self.msgs) if m < first_msg and b.msg_roles[m] == USER_CODE), None)
        head = self.head_end - self.start
        budget = min(self._context_budget(), self.capacity - reserve) - head
        size = {m: int(b.msg_ends[m] - b.msg_starts[m]) for m in (system, prompt) if m is not None}
        rooms = dict(size)
        if sum(size.values()) > budget:
            if system is not None:
                rooms[system] = min(size[system], budget // 4 if prompt is not None else budget)
            if prompt is not None:
                rooms[prompt] = budget - (rooms[system] if system is not None else 0)
        context = [(m, rooms[m]) for m in (system, prompt) if m is not None]
        exchange, results_whole = self._exchange(first_msg, prompt, budget - sum(rooms.values()))
        return context + [(m, self._span(m)[1] - self._span(m)[0]) for m in exchange], results_whole

    def _exchange(self, first_msg: int, prompt: int | None, room: int) -> tuple[list[int], bool]:
        """For a piece that opens at a tool result or at the turn after one: the exchange right before `first_msg`
        (the run of tool results there and the assistant turn that called them; earlier rounds are not repeated),
        whole messages only and the latest first, as many as fit in `room`; and whether the run of tool results
        right before `first_msg` is among them."""
        roles = self.batch.msg_roles
        after_results = first_msg > self.msgs[0] and roles[first_msg - 1] == TOOL_CODE
        if not after_results and roles[first_msg] != TOOL_CODE:
            return [], True
        run = 0
        while first_msg - run - 1 >= self.msgs[0] and roles[first_msg - run - 1] == TOOL_CODE:
            run += 1
        taken: list[int] = []
        lower = max(prompt if prompt is not None else self.msgs[0] - 1, first_msg - run - 2)
        for m in range(first_msg - 1, lower, -1):
            lo, hi = self._span(m)
            if roles[m] == SYSTEM_CODE or hi - lo > room:
                break
            taken.append(m)
            room -= hi - lo
        return taken[::-1], len(taken) >= run

    def _open(self, first_msg: int, reserve: int) -> None:
        """Start a piece whose body begins at message `first_msg`: BOS + system + prompting user + the tool
        exchange before it, mask 0."""
        self._add(self.start, self.head_end, zero=True)
        self.prompt_whole = True
        context, self.results_whole = self._context(first_msg, reserve)
        carry = 0
        for m, room in context:
            lo, hi = self._span(m)
            room += carry
            if hi - lo <= room:
                self._add(lo, hi, zero=True)
            else:
                added = self._add_shortened(m, room, zero=True)
                if self.batch.msg_roles[m] == USER_CODE:
                    self.prompt_whole = False
                elif not added:
                    carry = room  # the system message did not fit at all: the question gets its room

    def _continuing(self) -> bool:
        """True at the start of a piece that continues the conversation: its first role token was
        trained as the previous piece's turn end (role-token layout only)."""
        return self.role_tokens and not self.has_body and bool(self.pieces)

    # -- the walk -------------------------------------------------------------------------------------
    def split(self) -> tuple[list[Piece], SplitCounts]:
        """The pieces of the conversation and what splitting it did."""
        self._add(self.start, self.head_end)
        i = 0
        while i < len(self.msgs):
            i = self._step(i)
        last_end = self._span(self.msgs[-1])[1] if self.msgs else self.head_end
        self._add(last_end, self.end)
        self._reserve_fillers(self.length)
        self._close()
        self.counts.conversations_split = 1
        self.counts.pieces_split = len(self.pieces)
        return self.pieces, self.counts

    def _step(self, i: int) -> int:
        """Add message i (or close the piece before it, or before an earlier message); the next index."""
        m = self.msgs[i]
        lo, hi = self._span(m)
        tail = self._tail(i)
        role = self.batch.msg_roles[m]
        if role == USER_CODE:
            self.prompt_whole = True
        if role == USER_CODE or i == 0 or self.batch.msg_roles[m - 1] != TOOL_CODE:
            self.results_whole = True  # a turn that answers no tool results (or the first of a run of results)
        if self.length + (hi - lo) + tail <= self.capacity:
            self._add_whole(i)
            return i + 1
        trained = bool(self.batch.flags[lo + self._header(m) : hi].any())
        gap = self.capacity - self.length - tail - self._header(m)
        # Fill the row with the start of the turn (only under --turn-cut N), or rather than close a
        # piece that trains nothing (its context would only be repeated).
        if self.has_body and trained and gap > 0 and ((self.turn_cut and gap >= self.turn_cut) or not self.trained):
            self._cut_across(m, tail)
            return i + 1
        if self.has_body:
            j = self._choose_close(i)
            self._close_before(j)
            if j < i:
                return j  # walk again from message j, in the new piece
            if self.length + (hi - lo) + tail <= self.capacity:
                self._add_whole(i)
                return i + 1
        if trained:
            self._cut_across(m, tail)
        else:
            # An untrained message (a long question) that cannot fit whole: keep its end, so the
            # answer still sees the question it asks (usually at the end), and mark the cut.
            room = min(max(self._context_budget() - self.length, self._header(m) + 1),
                       self.capacity - self.length - tail)
            self.msg_whole = False
            self._add_shortened(m, room, zero=False, zero_first=self._continuing())
            if role == TOOL_CODE:
                self.results_whole = False
            else:
                self.prompt_whole = False
            self.has_body = True
        return i + 1

    def _add_whole(self, i: int) -> None:
        if self.has_body:
            self.marks.append(_Mark(i, len(self.parts), self.length, self.trained, self.prompt_whole,
                                    self.results_whole, self.counts.snapshot()))
        lo, hi = self._span(self.msgs[i])
        self.msg_whole = True
        self._add(lo, hi, zero_first=self._continuing())
        self.has_body = True

    def _choose_close(self, i: int) -> int:
        """The message before which to close the open piece: of the last boundaries that fit, the one
        whose hole the free short pieces fill best (ties: the latest); then those pieces are reserved.

        Boundaries whose next piece would have to shorten its question, or whose piece would train
        nothing, are not considered.
        """
        if self.pool is None:
            return i
        closing = int(self.role_tokens)
        candidates = [(i, self.length)] + [
            (mark.index, mark.length) for mark in reversed(self.marks[-LOOKBACK:])
            if mark.trained and not self._would_shorten(mark.index)
        ]
        best = None
        for j, length in candidates:
            hole = self.capacity - length - closing
            fillers = self.pool.fill(hole)
            left = hole - sum(fillers) + self._context_length(j)
            if best is None or left < best[0]:
                best = (left, j, fillers)
        assert best is not None
        _, j, fillers = best
        self.pool.take(fillers)
        if j < i:
            self._rollback(next(mark for mark in self.marks if mark.index == j))
        return j

    def _context_length(self, j: int) -> int:
        reserve = self._header(self.msgs[j]) + self._tail(j) + 1
        context, _ = self._context(self.msgs[j], reserve)
        return sum(min(self._span(m)[1] - self._span(m)[0], room) for m, room in context)

    def _would_shorten(self, j: int) -> bool:
        """Whether a piece re-opened at message j would shorten its context (or leave out tool results)."""
        reserve = self._header(self.msgs[j]) + self._tail(j) + 1
        context, results_whole = self._context(self.msgs[j], reserve)
        return not results_whole or any(self._span(m)[1] - self._span(m)[0] > room for m, room in context)

    def _rollback(self, mark: _Mark) -> None:
        del self.parts[mark.parts :]
        self.length, self.trained, self.prompt_whole = mark.length, mark.trained, mark.prompt_whole
        self.results_whole = mark.results_whole
        self.counts = mark.counts

    def _reserve_fillers(self, length: int) -> None:
        """A finished piece: longer than half a row, it takes fillers from the pool; else it is one."""
        if self.pool is None:
            return
        if 2 * length > self.capacity:
            self.pool.take(self.pool.fill(self.capacity - length))
        else:
            self.pool.add(length)

    def _close_before(self, j: int) -> None:
        """Close the piece before message j and re-open it with j's context. In the role-token layout
        j's role token ends the previous turn: the closed piece trains it as its last label."""
        m = self.msgs[j]
        lo, _ = self._span(m)
        if self.role_tokens:
            self.msg_whole = True
            self._add(lo, lo + 1)
        self._close()
        self._open(m, reserve=self._header(m) + self._tail(j) + 1)

    def _cut_before_untrained_rest(self, pos: int, room: int, hi: int) -> int:
        """Where to cut ids[pos:hi] within `room`: there, unless what follows the cut trains nothing (a chat
        template's separator after the end-of-turn). Then the cut moves before the turn's last label, so the
        continuation, which repeats the turn's header and text as context, trains that label: a repeated
        turn with no label in its piece would read like a turn the template never rendered (verify)."""
        flags = self.batch.flags
        if flags[pos + room : hi].any():
            return room
        labels = np.flatnonzero(flags[pos : pos + room])
        return int(labels[-1]) if len(labels) and labels[-1] > 0 else room

    def _cut_across(self, m: int, tail: int) -> None:
        """Add message m, cutting its content across as many pieces as needed. Each continuation is
        re-opened with the context, the message's header and the text right before the cut (masked)."""
        lo, hi = self._span(m)
        head = self._header(m)
        self.counts.exchanges_split += 1
        self.msg_whole = True
        self._add(lo, lo + head, zero_first=self._continuing())
        pos = lo + head
        while True:
            room = self.capacity - self.length - tail
            if hi - pos <= room:
                self._add(pos, hi)
                self.has_body = True
                return
            room = max(room, 1)  # only a row too small for its own context gets here
            room = self._cut_before_untrained_rest(pos, room, hi)
            self._add(pos, pos + room)
            pos += room
            self._close()
            i = self.msgs.index(m)
            if not self.batch.flags[pos:hi].any() and i + 1 < len(self.msgs):
                # Only untrained tokens are left of the turn (the separator after its end-of-turn, which could
                # not move behind a label at the cut's start): a continuation would repeat the whole turn
                # untrained, a turn the template never rendered. The next message opens the next piece instead.
                self._open(self.msgs[i + 1], reserve=self._header(self.msgs[i + 1]) + self._tail(i + 1) + 1)
                return
            self._open(m, reserve=head + tail + 1)
            self._add(lo, lo + head, zero=True)
            before = min(self._context_budget() - self.length, self.capacity - self.length - tail - 1,
                         int(self.capacity * CONTINUATION_SHARE))
            if before > 0:
                self._add_end_of(lo + head, pos, before, zero=True)
            self.msg_whole = False
