"""Label accounting over a rendered batch: per token, which message prompts it, where its own message starts,
whether it answers tool results; and prefix sums that count the labels of any token range in O(1).

The split counts its pieces' context completeness with these (`SplitCounts` in table.py); `packsft/stages.py` counts the same
figures for stream packing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.render.batch import TOOL_CODE, USER_CODE, RenderedBatch, concat_ranges, flag_totals


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


# A span's labels (LabelPrefix.span): (prompted, trained, answers) among its tokens, then (trained, prompted, answers)
# of its first token alone, which a piece masks where it opens with it.
SpanLabels = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class LabelPrefix:
    """Prefix sums over the batch's tokens: labels in [lo, hi) in O(1)."""

    prompted: np.ndarray  # trained and prompted by a user message
    trained: np.ndarray  # trained
    answers: np.ndarray  # trained, in a turn that answers tool results

    @staticmethod
    def of(batch: RenderedBatch) -> LabelPrefix:
        trained = batch.trained_totals
        # A batch without tool results (most) answers none: zeros cost no pass over its tokens (each total is a fresh
        # array, 4 bytes a token: 5 of the 20 ms a 3.7M-token ShareGPT unit spent here).
        tools = bool((batch.msg_roles == TOOL_CODE).any())
        return LabelPrefix(
            prompted=flag_totals(_prompted_flags(batch)),
            trained=trained,
            answers=flag_totals(answer_flags(batch)) if tools else np.zeros(len(trained), trained.dtype),
        )

    def labels(self, lo: int, hi: int) -> tuple[int, int]:
        """(prompted, trained) labels among tokens lo..hi-1."""
        return int(self.prompted[hi] - self.prompted[lo]), int(self.trained[hi] - self.trained[lo])

    def answer_labels(self, lo: int, hi: int) -> int:
        """Labels among tokens lo..hi-1 in turns that answer tool results."""
        return int(self.answers[hi] - self.answers[lo])

    def span(self, lo: int, hi: int) -> SpanLabels:
        """The labels of tokens lo..hi-1 (lo < hi) and of token lo alone, as SpanLabels."""
        prompted, trained, answers = self.prompted.item, self.trained.item, self.answers.item  # Python ints
        p, t, a = prompted(lo), trained(lo), answers(lo)
        return prompted(hi) - p, trained(hi) - t, answers(hi) - a, trained(lo + 1) - t, prompted(lo + 1) - p, \
            answers(lo + 1) - a
