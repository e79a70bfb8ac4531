"""The parts of the split, each on its own: the segment tree, the piece builder, the context planner and the cut
chooser (pack/segment_tree.py, pack/pieces.py, pack/context.py, pack/cuts.py).

Conversations are rendered by `render_roles` with the stand-in tokenizer of helpers ("n:k" -> n tokens 10 + k + i,
one role token per message), so every span below can be read off the ids.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packsft.pack.context import ContextPlanner
from packsft.pack.cuts import FILLERS_PER_HOLE, CutChooser, FillerPool
from packsft.pack.labels import LabelPrefix
from packsft.pack.pieces import Mark, PieceBuilder
from packsft.pack.segment_tree import LengthTree
from packsft.pack.spans import MessageSpans
from packsft.pack.table import SplitCounts
from packsft.read.records import ASSISTANT, SYSTEM, TOOL, USER, Conversation
from packsft.render.roles import render_roles
from tests.helpers import BOS, USR, FakeTokenizer


class ToolTokenizer(FakeTokenizer):
    """FakeTokenizer that reads the "n:k" inside a rendered text (tool results are wrapped in tags)."""

    def encode_texts(self, texts):
        return super().encode_texts([re.findall(r"\d+:\d+", text)[0] for text in texts])


def render(*messages):
    return render_roles([Conversation(tuple(messages))], ToolTokenizer())


# --- segment tree ----------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(0, 40),
    data=st.data(),
)
def test_length_tree_answers_as_a_scan_of_the_counts(capacity, data):
    lengths = data.draw(st.lists(st.integers(0, capacity), max_size=12))
    tree = LengthTree(capacity, np.asarray(lengths, np.int64))
    held = list(lengths)
    for _ in range(data.draw(st.integers(0, 8))):
        length = data.draw(st.integers(0, capacity))
        if length in held and data.draw(st.booleans()):
            tree.add(length, -1)
            held.remove(length)
        else:
            tree.add(length, 1)
            held.append(length)
        for x in range(capacity + 1):
            assert tree.smallest_at_least(x) == min((n for n in held if n >= x), default=None)


def test_filler_pool_fills_a_hole_longest_first_and_takes_only_when_told():
    pool = FillerPool(np.array([7, 2, 2, 5, 30]), capacity=20)
    assert pool.fill(10) == [7, 2]
    assert pool.fill(10) == [7, 2]  # judging a hole reserves nothing
    pool.take([7, 2])
    assert pool.fill(10) == [5, 2]
    assert pool.fill(20) == [20]  # a length over the capacity counts as the capacity


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), max_size=10), holes=st.lists(st.integers(0, 14), max_size=6))
def test_filler_pool_fills_as_best_fit_over_the_free_lengths(lengths, holes):
    pool = FillerPool(np.asarray(lengths, np.int64), capacity=12)
    for hole in holes:  # judging a hole takes nothing: each is filled from all the lengths
        assert pool.fill(hole) == best_fit(lengths, hole)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), max_size=10), data=st.data())
def test_filler_pool_fills_as_best_fit_after_adds_and_takes(lengths, data):
    pool, free = FillerPool(np.asarray(lengths, np.int64), capacity=12), list(lengths)
    for _ in range(data.draw(st.integers(0, 8))):
        hole = data.draw(st.integers(0, 14))
        if free and data.draw(st.booleans()):
            taken = pool.fill(hole)
            pool.take(taken)
            for length in taken:
                free.remove(length)
        else:
            length = data.draw(st.integers(0, 12))
            pool.add(length)
            free.append(length)
        assert pool.fill(hole) == best_fit(free, hole)


def best_fit(lengths: list[int], hole: int) -> list[int]:
    """The free lengths best-fit puts into a hole: the longest that fits, repeatedly (the reference)."""
    free, chosen = sorted(lengths, reverse=True), []
    while hole > 0 and len(chosen) < FILLERS_PER_HOLE:
        length = next((n for n in free if n <= hole), 0)
        if not length:
            break
        free.remove(length)
        chosen.append(length)
        hole -= length
    return chosen


# --- piece builder ---------------------------------------------------------------------------------------------

# ids: BOS | USR 11 12 13 | ASST 12..16 | USR 13 14 15 | ASST 14..18 | EOS; messages at 1, 5, 11, 15.
DIALOGUE = render((USER, "3:1"), (ASSISTANT, "5:2"), (USER, "3:3"), (ASSISTANT, "5:4"))


def test_the_piece_builder_rolls_back_to_the_mark_before_a_message():
    piece = PieceBuilder(DIALOGUE, LabelPrefix.of(DIALOGUE))
    piece.add(0, 1)
    piece.add_whole(0, 1, 5, zero_first=False)
    piece.add_whole(1, 5, 11, zero_first=False)
    piece.add_whole(2, 11, 15, zero_first=False)
    assert [mark.message for mark in piece.marks] == [1, 2]  # none before the body's first message
    assert (piece.length, piece.trained, piece.counts.turn_labels_whole) == (15, 7, 7)
    piece.rollback(1)
    assert (piece.length, piece.trained, piece.counts) == (5, 0, SplitCounts())
    piece.close()
    assert [(np.concatenate(ids).tolist(), np.concatenate(flags).tolist(), length)
            for ids, flags, length in piece.pieces] == [([BOS, USR, 11, 12, 13], [0] * 5, 5)]
    assert (piece.length, list(piece.marks), piece.has_body) == (0, [], False)


@pytest.mark.parametrize(("start_share", "expected"), [
    (0.0, [USR, 99, 15, 125, 126, 127, 128, 129]),  # the default: the end only (the question)
    # 5 of the 20 content tokens fit beside the marker: a quarter (1) from the start, the rest from the end.
    (0.25, [USR, 110, 99, 15, 126, 127, 128, 129]),
])
def test_the_piece_builder_shortens_a_message_to_its_header_a_marker_and_its_end_or_both_ends(start_share, expected):
    batch = render((SYSTEM, "6:900"), (USER, "20:100"), (ASSISTANT, "5:200"))  # the question spans 8..29
    piece = PieceBuilder(batch, LabelPrefix.of(batch), marker=lambda omitted: [99, omitted], start_share=start_share)
    assert not piece.add_shortened(8, 29, 1, 1, zero=True)  # no room for a token after the header
    assert piece.add_shortened(8, 29, 1, 8, zero=True)
    assert piece.length == 8 and piece.counts.prompts_shortened == 1
    piece.close()
    assert np.concatenate(piece.pieces[0].ids).tolist() == expected


@pytest.mark.parametrize(("room", "expected"), [
    (20, list(range(110, 130))),  # it fits: whole
    (14, [110, 111, 112, 99, 8, *range(121, 130)]),  # 12 kept: 3 from the start, 9 from the end
    (3, [99, 19, 129]),  # 1 kept: it goes to the end (the question)
    (2, [128, 129]),  # no room for the marker: the end alone
])
def test_with_a_start_share_a_shortened_message_keeps_a_quarter_of_its_room_from_its_start(room, expected):
    batch = render((SYSTEM, "6:900"), (USER, "20:100"), (ASSISTANT, "5:200"))
    piece = PieceBuilder(batch, LabelPrefix.of(batch), marker=lambda omitted: [99, omitted], start_share=0.25)
    left_out = piece.add_middle_of(9, 29, room, zero=True)
    assert piece.length == len(expected) <= room and left_out == 20 - sum(100 <= i < 200 for i in expected)
    piece.close()
    assert np.concatenate(piece.pieces[0].ids).tolist() == expected


# --- context planner -------------------------------------------------------------------------------------------

# messages: 0 system, 1 user, 2 assistant, 3 user, 4 assistant (calls), 5 tool result, 6 assistant (answers).
TRACE = render((SYSTEM, "2:900"), (USER, "3:100"), (ASSISTANT, "3:150"), (USER, "3:200"), (ASSISTANT, "2:300"),
               (TOOL, "2:400"), (ASSISTANT, "9:500"))


@pytest.mark.parametrize(("capacity", "i", "plan"), [
    (31, 2, [(0, 3), (1, 4)]),  # a turn: the system message and its question
    (31, 3, [(0, 3)]),  # a question: the system message only
    (31, 6, [(0, 3), (3, 4), (4, 3), (5, 3)]),  # the answer to a tool result: the call and the result too
    (17, 6, [(0, 3), (3, 4), (5, 3)]),  # little room: the latest of the exchange first, whole messages only
])
def test_the_context_planner_reopens_a_piece_with_its_question_and_tool_exchange(capacity, i, plan):
    planner = ContextPlanner(MessageSpans(TRACE, 0, capacity))
    context, results_whole = planner.plan(i)
    assert ([(part.message, part.room) for part in context], results_whole) == (plan, True)
    assert all(part.hi - part.lo == part.room for part in context)  # each whole
    assert planner.length(i) == sum(room for _, room in plan)
    assert not planner.would_shorten(i)


def test_role_tokens_open_every_turn_in_its_own_message_so_no_piece_repeats_a_turn_opener():
    """Only a message without a header of its own continues an earlier message's turn (test_split_turns.py)."""
    planner = ContextPlanner(MessageSpans(TRACE, 0, 31))
    assert [planner.turn_opener(i) for i in range(7)] == [None] * 7
    assert [planner.reserve(i) for i in range(7)] == [planner.spans.reserve(i) for i in range(7)]


def test_the_context_planner_gives_the_question_more_room_than_the_system_message():
    batch = render((SYSTEM, "6:900"), (USER, "20:100"), (ASSISTANT, "5:200"))
    planner = ContextPlanner(MessageSpans(batch, 0, 25))
    # 17 tokens of context (3/4 of the row, less the BOS): the system message a quarter, the question the rest.
    context, results_whole = planner.plan(2)
    assert ([(part.message, part.room, part.prompt) for part in context], results_whole) == (
        [(0, 4, False), (1, 13, True)], True)
    assert planner.would_shorten(2)


# --- cut chooser -----------------------------------------------------------------------------------------------


def chooser(fillers: list[int]) -> CutChooser:
    spans = MessageSpans(DIALOGUE, 0, 20)
    return CutChooser(spans, ContextPlanner(spans), pool=FillerPool(np.array(fillers), 20))


def mark(index: int, length: int, trained: int = 5) -> Mark:
    return Mark(index, 0, length, trained, True, True, ())


def test_the_cut_chooser_takes_the_boundary_whose_hole_fillers_fill_best():
    # The last message does not fit a piece of 15 tokens (BOS and messages 0-2). Closing before it leaves a hole
    # of 4 and repeats its 4-token question; closing before message 2 leaves a hole of 8, which a filler fills.
    cuts = chooser([8])
    assert cuts.choose_close(3, 15, [mark(2, 11)]) == 2
    assert cuts.pool is not None and cuts.pool.fill(8) == []  # the filler is reserved


@pytest.mark.parametrize(("fillers", "marks", "close"), [
    ([4], [mark(2, 11)], 3),  # both leave 4 tokens (a hole, or repeated context): the latest boundary
    ([8], [mark(2, 11, trained=0)], 3),  # a piece that would train nothing is no candidate
    ([14], [mark(1, 5), mark(2, 11, trained=0)], 3),  # only the last LOOKBACK (1) marks are
])
def test_the_cut_chooser_keeps_the_latest_boundary_unless_an_earlier_one_fills_better(fillers, marks, close):
    assert chooser(fillers).choose_close(3, 15, marks) == close


def test_without_a_pool_the_cut_chooser_closes_at_the_last_boundary():
    spans = MessageSpans(DIALOGUE, 0, 20)
    assert CutChooser(spans, ContextPlanner(spans)).choose_close(3, 15, [mark(2, 11)]) == 3


@pytest.mark.parametrize(("turn_cut", "gap", "piece_trained", "cut"), [
    (0, 6, 5, False),  # never cut a turn to fill a row
    (0, 6, 0, True),  # ... unless the piece would train nothing
    (0, 0, 0, False),  # ... and there is room for part of it
    (5, 5, 5, True),  # turn_cut N: cut when a boundary would leave N or more tokens empty
    (5, 4, 5, False),
])
def test_the_cut_chooser_cuts_a_turn_only_by_the_turn_cut_rules(turn_cut, gap, piece_trained, cut):
    spans = MessageSpans(DIALOGUE, 0, 20)
    assert CutChooser(spans, ContextPlanner(spans), turn_cut=turn_cut).cuts_turn(gap, piece_trained) is cut
