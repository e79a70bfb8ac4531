"""Packing: the packers and the chunk layout, exact cases and Hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packsft.pack.bins import linear_rows, pack_aligned, pack_bestfit
from packsft.pack.rows import build_chunks, build_linear_chunks, segment_starts
from packsft.pack.split import split_long
from packsft.read.records import Conversation
from packsft.render.roles import render_roles
from tests.helpers import BOS, PAD, SYS, USR, FakeTokenizer


def conversation(lengths: list[int], system: int | None = None, unprompted: bool = False) -> Conversation:
    messages = [("system", f"{system}:7")] if system is not None else []
    roles = ["assistant", "user"] if unprompted else ["user", "assistant"]
    messages += [(roles[i % 2], f"{n}:{i}") for i, n in enumerate(lengths)]
    return Conversation(tuple(messages))


def render(conversations, mask="assistant_only"):
    return render_roles(conversations, FakeTokenizer(), mask=mask)


# --- packers on lengths ----------------------------------------------------------------------------


def test_aligned_is_greedy_in_input_order():
    packing = pack_aligned(np.array([5, 4, 2, 6, 1]), capacity=10)
    rows = [packing.order[a:b].tolist() for a, b in zip(packing.row_offsets[:-1], packing.row_offsets[1:])]
    assert rows == [[0, 1], [2, 3, 4]]


def test_bestfit_fills_the_tightest_row():
    packing = pack_bestfit(np.array([6, 5, 4, 3, 2]), capacity=10)
    rows = [sorted(packing.order[a:b].tolist()) for a, b in zip(packing.row_offsets[:-1], packing.row_offsets[1:])]
    assert rows == [[0, 2], [1, 3, 4]]


@pytest.mark.parametrize("packer", [pack_aligned, pack_bestfit])
def test_packers_refuse_pieces_longer_than_a_row(packer):
    with pytest.raises(ValueError, match="split or truncate"):
        packer(np.array([3, 11]), capacity=10)


@pytest.mark.parametrize(("tokens", "seq_length", "rows"), [(1, 4, 0), (5, 4, 1), (6, 4, 2), (9, 4, 2), (10, 4, 3)])
def test_linear_rows_share_the_boundary_token(tokens, seq_length, rows):
    assert linear_rows(tokens, seq_length) == rows


# --- chunks: strategy x mask x L -------------------------------------------------------------------

CORPUS = [
    conversation([3, 4]),
    conversation([10, 30, 5, 8], system=4),
    conversation([2, 2, 2, 2, 2, 2]),
    conversation([6, 50]),  # one exchange longer than small rows
    conversation([5, 9], unprompted=True),
    conversation([1, 1]),
]


def pack(batch, strategy, seq_length, long, fill_cut=0):
    pieces, counts = split_long(batch, seq_length, long, turn_cut=fill_cut)
    packer = pack_bestfit if strategy == "bestfit" else pack_aligned
    return build_chunks(pieces, packer(pieces.lengths, seq_length + 1), seq_length, PAD), counts


@pytest.mark.parametrize("seq_length", [16, 33, 64, 200])
@pytest.mark.parametrize("mask", ["all", "assistant_only"])
@pytest.mark.parametrize("strategy", ["aligned", "bestfit"])
def test_aligned_rows_start_at_bos_and_never_train_pads(strategy, mask, seq_length):
    batch = render(CORPUS, mask)
    chunks, _ = pack(batch, strategy, seq_length, "split")
    assert chunks.tokens.shape[1] == seq_length + 1
    assert chunks.loss_mask.shape == (chunks.rows, seq_length)
    assert (chunks.tokens[:, 0] == BOS).all()
    used = np.add.reduceat(chunks.segment_lengths, chunks.row_segments[:-1])
    for row, n in enumerate(used):
        assert (chunks.tokens[row, n:] == PAD).all()
        assert chunks.loss_mask[row, n - 1 :].sum() == 0  # labels at n.. are pads
    assert chunks.loss_mask.sum() == batch.flags.sum()  # split loses nothing


@pytest.mark.parametrize("seq_length", [8, 16, 100])
@pytest.mark.parametrize("mask", ["all", "assistant_only"])
def test_linear_trains_every_flag_after_the_first_token_exactly_once(mask, seq_length):
    batch = render(CORPUS, mask)
    chunks = build_linear_chunks(batch.ids, batch.flags, batch.conv_offsets, seq_length, PAD)
    # Rows overlap by one token: row k+1 starts with the last token of row k.
    assert (chunks.tokens[1:, 0] == chunks.tokens[:-1, -1]).all()
    stream = np.concatenate([chunks.tokens[0]] + [row[1:] for row in chunks.tokens[1:]])
    assert stream[: len(batch.ids)].tolist() == batch.ids.tolist()
    assert chunks.loss_mask.sum() == batch.flags[1:].sum()
    assert chunks.segment_lengths.sum() == len(batch.ids) + chunks.rows - 1


def test_truncate_keeps_the_first_l_plus_1_tokens_and_counts():
    batch = render(CORPUS)
    chunks, counts = pack(batch, "aligned", 16, "truncate")
    assert counts.conversations_truncated == int((batch.lengths > 17).sum())
    assert chunks.segment_lengths.max() <= 17


def test_drop_discards_long_conversations():
    batch = render(CORPUS)
    _, counts = split_long(batch, 16, "drop")
    assert counts.conversations_dropped_long == int((batch.lengths > 17).sum())


def test_split_pieces_reopen_with_system_and_prompt_as_masked_context():
    batch = render([conversation([4, 6, 4, 6, 4, 6], system=3)])
    pieces, counts = split_long(batch, 20, "split")
    assert counts.conversations_split == 1 and len(pieces) > 1
    for p in range(1, len(pieces)):
        ids = pieces.ids[pieces.offsets[p] : pieces.offsets[p + 1]].tolist()
        flags = pieces.flags[pieces.offsets[p] : pieces.offsets[p + 1]].tolist()
        assert ids[0] == BOS and ids[1] == SYS  # context: BOS, the system message ...
        first_trained = flags.index(1)
        assert USR in ids[:first_trained]  # ... and the user question before any trained label
    assert pieces.flags.sum() == batch.flags.sum()
    assert counts.prompted_labels == counts.prompted_labels_complete


def test_an_exchange_longer_than_a_row_is_cut_with_its_question_repeated():
    batch = render([conversation([5, 80])])
    pieces, counts = split_long(batch, 30, "split")
    assert counts.exchanges_split == 1
    assert pieces.lengths.max() <= 31
    assert pieces.flags.sum() == batch.flags.sum()
    for p in range(len(pieces)):
        ids = pieces.ids[pieces.offsets[p] : pieces.offsets[p + 1]].tolist()
        assert ids[:2] == [BOS, USR]


def test_segment_starts_are_running_lengths_per_row():
    starts = segment_starts(np.array([3, 4, 5, 2], np.int32), np.array([0, 2, 4]))
    assert starts.tolist() == [0, 3, 0, 5]


# --- properties ------------------------------------------------------------------------------------

conversations_st = st.lists(
    st.tuples(
        st.lists(st.integers(0, 120), min_size=1, max_size=8),
        st.one_of(st.none(), st.integers(0, 40)),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    conversations_st,
    st.integers(8, 160),
    st.sampled_from(["aligned", "bestfit"]),
    st.sampled_from(["all", "assistant_only"]),
    st.sampled_from([0, 1, 6, 64]),
)
def test_split_packing_properties(spec, seq_length, strategy, mask, fill_cut):
    batch = render([conversation(lengths, system, unprompted) for lengths, system, unprompted in spec], mask)
    chunks, counts = pack(batch, strategy, seq_length, "split", fill_cut)
    capacity = seq_length + 1
    # Rows never exceed L+1 and every row starts with BOS.
    assert chunks.tokens.shape[1] == capacity
    assert (chunks.tokens[:, 0] == BOS).all()
    # No trained token lost.
    assert chunks.loss_mask.sum() == batch.flags.sum()
    # Pads are never trained, and no label crosses a segment boundary (a segment start is BOS, never trained).
    counts_per_row = np.diff(chunks.row_segments)
    starts = segment_starts(chunks.segment_lengths, chunks.row_segments)
    rows = np.repeat(np.arange(chunks.rows), counts_per_row)
    assert (chunks.tokens[rows, starts] == BOS).all()
    label_at_start = starts[starts > 0] - 1
    assert chunks.loss_mask[rows[starts > 0], label_at_start].sum() == 0
    used = np.add.reduceat(chunks.segment_lengths, chunks.row_segments[:-1])
    assert (used <= capacity).all()
    for row, n in enumerate(used):
        assert chunks.loss_mask[row, n - 1 :].sum() == 0
    # Same input, byte-identical output.
    again, _ = pack(batch, strategy, seq_length, "split", fill_cut)
    assert again.tokens.tobytes() == chunks.tokens.tobytes()
    assert again.loss_mask.tobytes() == chunks.loss_mask.tobytes()
    assert again.segment_lengths.tobytes() == chunks.segment_lengths.tobytes()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=0, max_size=200), st.integers(0, 300))
def test_bestfit_places_every_piece_once_within_capacity(lengths, extra):
    capacity = max(lengths, default=1) + extra
    packing = pack_bestfit(np.array(lengths, np.int64), capacity)
    assert sorted(packing.order.tolist()) == list(range(len(lengths)))
    lengths = np.array(lengths, np.int64)
    for a, b in zip(packing.row_offsets[:-1], packing.row_offsets[1:]):
        assert 0 < lengths[packing.order[a:b]].sum() <= capacity
    # No two rows could be merged: best fit only opens a row when no open row has room.
    used = np.sort([lengths[packing.order[a:b]].sum() for a, b in zip(packing.row_offsets[:-1], packing.row_offsets[1:])])
    if len(used) > 1:
        assert used[0] + used[1] > capacity


@settings(max_examples=100, deadline=None)
@given(conversations_st, st.integers(12, 160), st.sampled_from([0, 6, 64]))
def test_unprompted_mask_gives_every_trained_label_bos_and_a_question(spec, seq_length, fill_cut):
    from packsft.pack.rows import labels_with_bos_and_user

    conversations = [conversation(lengths, system, unprompted) for lengths, system, unprompted in spec]
    batch = render_roles(conversations, FakeTokenizer(), unprompted="mask")
    chunks, _ = pack(batch, "bestfit", seq_length, "split", fill_cut)
    assert chunks.loss_mask.sum() == batch.flags.sum()
    assert labels_with_bos_and_user(chunks, BOS, USR) == chunks.loss_mask.sum()


@settings(max_examples=100, deadline=None)
@given(conversations_st, st.sampled_from(["keep", "mask"]), st.sampled_from(["all", "assistant_only"]))
def test_fast_prompted_flags_follow_the_prompt_rule(spec, unprompted, mask):
    from packsft.pack.labels import _prompted_flags, prompt_starts

    conversations = [conversation(lengths, system, first) for lengths, system, first in spec]
    batch = render_roles(conversations, FakeTokenizer(), mask=mask, unprompted=unprompted)
    expected = ((prompt_starts(batch) >= 0) & batch.flags.astype(bool)).astype(np.uint8)
    assert _prompted_flags(batch).tolist() == expected.tolist()


def test_context_share_trades_whole_questions_for_repeated_tokens():
    # A 30-token question answered by a 120-token turn, in rows of 51: the answer spans several pieces.
    batch = render([conversation([30, 120])])
    _, tight = split_long(batch, 50, "split", context_share=0.5)
    pieces, roomy = split_long(batch, 50, "split", context_share=0.75)
    assert tight.prompts_shortened > 0 and tight.prompted_labels_complete < tight.prompted_labels
    assert roomy.prompts_shortened == 0 and roomy.prompted_labels_complete == roomy.prompted_labels
    assert pieces.flags.sum() == batch.flags.sum()


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1, True])
def test_context_share_must_be_a_fraction(share):
    from packsft import PackConfig
    from packsft.errors import ConfigError

    with pytest.raises(ConfigError, match="context_share must be a number between 0 and 1"):
        PackConfig(context_share=share)
