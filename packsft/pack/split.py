"""Turn rendered conversations into pieces that fit a row of L+1 tokens (`--long split|truncate|drop`).

A conversation that fits is one piece. A longer one, under `split`, is cut only at message
boundaries, and every piece after the first is re-opened with its context, re-rendered with mask 0:

    piece 1:  BOS SYS.. USR q1.. ASST a1.. USR            <- ends with the turn-end token it trains
    piece 2:  BOS SYS.. USR q1.. | ASST a2.. USR q3.. ASST a3.. EOS
              `--- context, 0 --'  `--- original flags (first role token 0: piece 1 trained it)

Where to close a piece: not always at the last message boundary that fits. That leaves holes of 1-250
tokens at the end of rows, which few whole conversations fit. Among the last `LOOKBACK` boundaries that
fit, the splitter picks the one whose hole the still-free short conversations of the batch fill best
(`FillerPool` in cuts.py: best-fit with up to `FILLERS_PER_HOLE` of them), and reserves those conversations.

A turn is never cut to fill a row (`turn_cut=0`, the default): the model would learn the second half
of an answer without its first half. Only a turn longer than a row is cut, at a safe boundary where `safe` is given
(cuts.SafeCuts: after a line or a sentence, never inside a tool call or its JSON); each continuation shows that it
continues: it is
re-opened with the question AND the immediately preceding tokens of the same turn (masked, after an
`[… N tokens omitted]` marker; up to `CONTINUATION_SHARE` (context.py) of the row, within `context_share`), so every
continuation label sees the text right before it. `turn_cut=N` (N > 0) restores the old trade: cut a trained turn to fill
a row whenever a boundary cut would leave N or more tokens empty (higher fill, beheaded turns).

A question that takes more than `context_share` of a row keeps its end after the marker, or with
`--prompt-start-share` also its start before it. Nothing trainable is lost; each trained label sees its question
(or both its ends).

Agentic traces: a tool result (TOOL_CODE) is context for the assistant turn after it. A piece that opens at a
tool result, or at the assistant turn after one, is re-opened also with the tool exchange right before it
(the run of results and the assistant turn that called them; earlier rounds are not repeated: on the
generated tool-calling corpus of BENCHMARKS.md repeating every round since the question cost 14% more rows
and lowered context completeness), masked, whole messages only (never a cut inside a tool call), the latest
first, as much as the context share leaves:

    piece 1:  BOS SYS.. USR q.. ASST <tool_call>.. USR <tool_response>.. ASST
    piece 2:  BOS SYS.. USR q.. ASST <tool_call>.. USR <tool_response>.. | ASST answer.. EOS
              `------------------------ context, 0 ------------------'

A template that renders the call, its results and the answer as one turn (Gemma 4: only the call opens with a
header) re-opens such a piece also with that turn from its header on, shortened where it does not fit
(`ContextPlanner.turn_opener`): the answer is then trained inside its own turn, not after the user's.

Context completeness (`prompted_labels_complete` of `prompted_labels`, the trained labels that a user
message prompts): a label is complete when its prompting user message is whole in its piece and, for a
turn that answers tool results, so is the run of tool results right before the turn. A piece that cannot
hold that run (it does not fit beside the question) leaves the turn's labels incomplete; a cut is never
moved back to a boundary whose next piece would do so.

Chat-template renderings (`mode == "chat"`) differ in two ways: a message opens with several header
tokens instead of one role token (kept whole wherever the role token is kept), and a turn's end-of-turn
tokens are the end of its own message span, so closing a piece adds nothing from the next message.

`ConversationSplitter` walks one conversation's messages with three parts, each testable on its own:

    pieces.py   PieceBuilder    the open piece: spans added with their label counts, marks to roll back to
    context.py  ContextPlanner  which messages re-open a piece, and how much of each fits
    cuts.py     CutChooser      where to close a piece (lookback, fillers), and when a turn is cut

Cost: O(tokens) copies for the conversations that are cut; conversations that fit are sliced. Each close
plans context in O(messages of the conversation) and asks the filler pool in O(log L).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.config import CONTEXT_SHARE, DEFAULT_TURN_CUT
from packsft.pack.context import ContextPlanner
from packsft.pack.cuts import CutChooser, FillerPool, SafeCuts
from packsft.pack.labels import LabelPrefix
from packsft.pack.pieces import PieceBuilder
from packsft.pack.spans import MessageSpans, MessageTable
from packsft.pack.table import Collector, Piece, PieceTable, SplitCounts
from packsft.render.batch import TOOL_CODE, USER_CODE, RenderedBatch
from packsft.render.markers import Marker

# What callers import from here (the tables a split returns live in table.py, label accounting in labels.py).
__all__ = ["PieceTable", "SplitCounts", "split_long"]


def split_long(
    batch: RenderedBatch,
    seq_length: int,
    policy: str,
    marker: Marker | None = None,
    turn_cut: int = DEFAULT_TURN_CUT,
    context_share: float = CONTEXT_SHARE,
    safe: SafeCuts | None = None,
    start_share: float = 0.0,
) -> tuple[PieceTable, SplitCounts]:
    """Cut `batch` into pieces of at most seq_length + 1 tokens.

    Args:
        policy: "split" (cut at message boundaries, re-open with context), "truncate" (keep the first
            L+1 tokens) or "drop" (discard the conversation).
        marker: token ids of the marker put where `n` tokens of a long prompt were cut away.
        turn_cut: 0 cuts inside a turn only when it alone exceeds a row; N > 0 also cuts a trained turn
            to fill a row when a boundary cut would leave N or more tokens empty (beheads turns).
        context_share: the most of a row that copied context (system + question) may take; a longer
            question is shortened. Higher keeps more questions whole and repeats more tokens.
        start_share: the share of a shortened message's kept tokens taken from its start (the rest from its end,
            after the marker); 0 keeps its end only.
    """
    capacity = seq_length + 1
    prefix = LabelPrefix.of(batch)
    out = Collector(batch, prefix)
    lengths = batch.lengths
    fits = lengths <= capacity
    long = np.flatnonzero(~fits).tolist()
    pool = FillerPool(lengths[fits], capacity) if policy == "split" and long else None
    table = MessageTable.of(batch, capacity, prefix) if policy == "split" and long else None
    counts, previous = [out.whole_counts(fits)], 0
    for c in long:
        out.add_run(previous, c)
        previous = c + 1
        if policy == "drop":
            counts.append(SplitCounts(conversations_dropped_long=1, truncated_or_dropped=[c]))
        elif policy == "truncate":
            counts.append(out.add_truncated(c, capacity))
        else:
            splitter = ConversationSplitter(batch, c, capacity, prefix, marker, turn_cut, context_share, pool, safe,
                                            start_share, table)
            pieces, conv_counts = splitter.split()
            counts.append(conv_counts)
            out.add_pieces(c, pieces)
    out.add_run(previous, len(batch))
    return out.table(), SplitCounts.total(counts)


@dataclass
class ConversationSplitter:
    """Splits one conversation into pieces (see the module docstring); `split()` returns them and its counts."""

    batch: RenderedBatch
    conv: int
    capacity: int
    prefix: LabelPrefix
    marker: Marker | None = None
    turn_cut: int = DEFAULT_TURN_CUT
    context_share: float = CONTEXT_SHARE
    pool: FillerPool | None = None  # short pieces of the batch still free to fill holes; reserved as used
    safe: SafeCuts | None = None  # where a long turn may be cut
    start_share: float = 0.0  # of a shortened message's kept tokens, the share from its start
    table: MessageTable | None = None  # the batch's messages (built for this conversation where not given)

    def __post_init__(self) -> None:
        self.spans = MessageSpans(self.batch, self.conv, self.capacity, self.table)
        self.planner = ContextPlanner(self.spans, self.context_share)
        self.cuts = CutChooser(self.spans, self.planner, self.turn_cut, self.pool, self.safe)
        self.piece = PieceBuilder(self.batch, self.prefix, self.marker, start_share=self.start_share)

    def split(self) -> tuple[list[Piece], SplitCounts]:
        """The pieces of the conversation and what splitting it did."""
        spans, piece = self.spans, self.piece
        self._add_head(0, zero=False)
        i = 0
        while i < len(spans.msgs):
            i = self._add_fitting(i)
            if i < len(spans.msgs):
                i = self._step(i)
        last_end = spans.span(spans.msgs[-1])[1] if spans.msgs else spans.head_end
        piece.add(last_end, spans.end)
        self.cuts.reserve_fillers(piece.length)
        return piece.finish()

    def _add_fitting(self, first: int) -> int:
        """Add messages first, first+1, ... whole while each fits the open piece; the first that does not (or the end).

        Most messages fit whole: this loop reads the conversation's lists once, not once a message (`_step` handles
        the message that does not fit)."""
        piece, capacity = self.piece, self.capacity
        starts, ends, tails, roles = self.spans.starts, self.spans.ends, self.spans.tails, self.spans.roles
        carries, labels = self.spans.carries, self.spans.labels
        for i in range(first, len(starts)):
            lo, hi = starts[i], ends[i]
            if piece.length + (hi - lo) + tails[i] > capacity:
                return i
            piece.start_message(prompts=roles[i] == USER_CODE, follows_results=i > 0 and roles[i - 1] == TOOL_CODE)
            piece.add_whole(i, lo, hi, zero_first=carries[i] and piece.reopened, labels=labels[i])
        return len(starts)

    def _step(self, i: int) -> int:
        """Add message i, which does not fit the open piece whole (`_add_fitting` adds those), or close the piece
        before it, or before an earlier message; the next index."""
        spans, piece = self.spans, self.piece
        lo, hi, tail, role = spans.starts[i], spans.ends[i], spans.tails[i], spans.roles[i]
        piece.start_message(prompts=role == USER_CODE, follows_results=i > 0 and spans.roles[i - 1] == TOOL_CODE)
        m, trained = spans.msgs[i], spans.body_trained[i]
        gap = self.capacity - piece.length - tail - spans.headers[i]
        if piece.has_body and trained and self.cuts.cuts_turn(gap, piece.trained):
            self._cut_across(i, tail)
            return i + 1
        if piece.has_body:
            j = self.cuts.choose_close(i, piece.length, piece.marks)
            if j < i:
                piece.rollback(j)
            self._close_before(j)
            if j < i:
                return j  # walk again from message j, in the new piece
            if piece.length + (hi - lo) + tail <= self.capacity:
                self._add_whole(i)
                return i + 1
        if trained:
            self._cut_across(i, tail)
        else:
            # An untrained message (a long question) that cannot fit whole: keep its start and its end, so the
            # answer still sees the instruction that opens it and the question that closes it, and mark the cut.
            room = self.planner.question_room(m, piece.length, tail)
            piece.add_shortened_message(lo, hi, spans.headers[i], room, tool=role == TOOL_CODE,
                                        zero_first=self._continuing(i))
        return i + 1

    def _continuing(self, i: int) -> bool:
        """True where message i opens a piece that continues the conversation and its first token was trained as
        the previous piece's turn end (a role token; a chat template's next role token: MessageSpans.carried)."""
        return self.spans.carries[i] and self.piece.reopened

    def _add_whole(self, i: int) -> None:
        spans = self.spans
        self.piece.add_whole(i, spans.starts[i], spans.ends[i], zero_first=self._continuing(i), labels=spans.labels[i])

    def _open(self, i: int) -> None:
        """Start a piece whose body begins at message i: BOS + system + prompting user + the tool exchange
        before it (and the turn it continues, where an earlier message opened that turn), mask 0."""
        piece = self.piece
        self._add_head(i, zero=True)
        context, results_whole = self.planner.plan(i)
        piece.reopen(results_whole=results_whole)
        carry = 0
        for part in context:
            room = part.room + carry
            if not piece.add_context(part.lo, part.hi, part.head, room, prompt=part.prompt) and not part.prompt:
                carry = room  # the system message did not fit at all: the question gets its room

    def _add_head(self, i: int, *, zero: bool) -> None:
        """The conversation's head, in a piece that opens at message i: whole, or shortened where it leaves no room
        for the body (ContextPlanner.head_room)."""
        self.piece.add_head(self.spans.start, self.spans.head_end, self.planner.head_room(i), zero=zero)

    def _close_before(self, j: int) -> None:
        """Close the piece before message j and re-open it with j's context. Where j's first token ends the
        previous turn (a role token; GLM's next role token), the closed piece trains it as its last label."""
        lo, _ = self.spans.span(self.spans.msgs[j])
        if self.spans.carried(self.spans.msgs[j]):
            self.piece.add_turn_end(lo)
        self.piece.close()
        self._open(j)

    def _cut_across(self, i: int, tail: int) -> None:
        """Add message i, cutting its content across as many pieces as needed. Each continuation is
        re-opened with the context, the message's header and the text right before the cut (masked)."""
        spans, piece = self.spans, self.piece
        m = spans.msgs[i]
        lo, hi = spans.span(m)
        head = spans.header(m)
        piece.start_cut(lo, head, zero_first=self._continuing(i))
        pos = lo + head
        while True:
            room = self.capacity - piece.length - tail
            if hi - pos <= room:
                piece.end_cut(pos, hi)
                return
            room = max(room, 1)  # only a row too small for its own context gets here
            room = self.cuts.cut_before_untrained_rest(pos, room, hi)
            piece.add(pos, pos + room)
            pos += room
            piece.close()
            if not self.batch.flags[pos:hi].any() and i + 1 < len(spans.msgs):
                # Only untrained tokens are left of the turn (the separator after its end-of-turn, which could
                # not move behind a label at the cut's start): a continuation would repeat the whole turn
                # untrained, a turn the template never rendered. The next message opens the next piece instead.
                self._open(i + 1)
                return
            self._open(i)
            piece.resume_cut(lo, head, pos, self.planner.continuation_room(piece.length + head, tail))
