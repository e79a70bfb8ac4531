"""Where one conversation's messages lie in the batch (`MessageSpans`), read by the parts of the split, from what
every message of the batch holds (`MessageTable`, computed once a batch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.pack.labels import LabelPrefix, SpanLabels
from packsft.render.batch import ASSISTANT_CODE, SYSTEM_CODE, USER_CODE, RenderedBatch


@dataclass(frozen=True)
class MessageTable:
    """Per message of the batch, as Python lists: the split reads them per message, hundreds of thousands of times a
    unit, where one numpy scalar (or a slice's `.any()`) costs several list items. Computed for all messages at
    once, in a few array operations."""

    starts: list[int]
    ends: list[int]
    roles: list[int]
    headers: list[int]  # header tokens, kept whole when a message is shortened or cut (MessageSpans.header)
    carries: list[bool]  # its first token is the label that ends the turn before it (MessageSpans.carried)
    body_trained: list[bool]  # a token after its header is trained
    labels: list[SpanLabels]  # LabelPrefix.span of its tokens

    @staticmethod
    def of(batch: RenderedBatch, capacity: int, prefix: LabelPrefix) -> MessageTable:
        starts, ends, roles = batch.msg_starts, batch.msg_ends, batch.msg_roles
        sizes = ends - starts
        if batch.mode == "roles":  # a message's first token is its whole header and ends the previous turn
            headers = np.minimum(1, sizes)
            carries = np.ones(len(roles), bool)
        else:
            headers = np.minimum(np.minimum(np.maximum(batch.msg_headers, 0), sizes), capacity // 4)
            # A chat template's next role token that the model stops on (GLM: `<|user|>` after a turn).
            follows = np.zeros(len(roles), bool)
            follows[1:] = roles[:-1] == ASSISTANT_CODE
            follows[batch.conv_msg_offsets[:-1][np.diff(batch.conv_msg_offsets) > 0]] = False  # a first message
            first_flag = batch.flags[np.minimum(starts, max(len(batch.flags) - 1, 0))] if len(batch.flags) else 0
            carries = follows & (roles != ASSISTANT_CODE) & (first_flag > 0)
        body_trained = prefix.trained[ends] - prefix.trained[starts + headers] > 0
        second = np.minimum(starts + 1, len(batch.ids))  # an empty message at the very end has no first token
        columns = [prefix.prompted[ends] - prefix.prompted[starts], prefix.trained[ends] - prefix.trained[starts],
                   prefix.answers[ends] - prefix.answers[starts], prefix.trained[second] - prefix.trained[starts],
                   prefix.prompted[second] - prefix.prompted[starts], prefix.answers[second] - prefix.answers[starts]]
        return MessageTable(starts.tolist(), ends.tolist(), roles.tolist(), headers.tolist(), carries.tolist(),
                            body_trained.tolist(), list(zip(*(column.tolist() for column in columns))))


class MessageSpans:
    """Where conversation `conv`'s messages lie in the batch, and what a piece must keep beside each.

    Messages are numbered in the batch (`m`, as `msgs` lists them) and within the conversation (`i`, the index into
    `msgs`); the lists (`starts`, `ends`, `roles`, `headers`, `carries`, `tails`, `body_trained`, `labels`) are by i.
    `table` is the batch's MessageTable for this capacity (built here where not given).
    """

    def __init__(self, batch: RenderedBatch, conv: int, capacity: int, table: MessageTable | None = None) -> None:
        if table is None:
            table = MessageTable.of(batch, capacity, LabelPrefix.of(batch))
        self.batch, self.capacity = batch, capacity
        self.start, self.end = int(batch.conv_offsets[conv]), int(batch.conv_offsets[conv + 1])
        first, stop = int(batch.conv_msg_offsets[conv]), int(batch.conv_msg_offsets[conv + 1])
        self.msgs = list(range(first, stop))
        self._first = first
        self.starts, self.ends = table.starts[first:stop], table.ends[first:stop]
        self.roles, self.headers = table.roles[first:stop], table.headers[first:stop]
        self.carries, self.body_trained = table.carries[first:stop], table.body_trained[first:stop]
        self.labels = table.labels[first:stop]
        self.head_end = self.starts[0] if self.msgs else self.end
        # What must follow message i in its piece: the EOS after the last, else the token that ends its turn where
        # the next message opens with it (`carried`).
        self.tails = [int(carried) for carried in self.carries[1:]] + ([self.end - self.ends[-1]] if self.msgs else [])
        # Role-token layout: a message's first token is its whole header and ends the previous turn.
        self.role_tokens = batch.mode == "roles"
        # The first system message (numbered in the batch), which a re-opened piece repeats; None where there is none.
        self.system = first + self.roles.index(SYSTEM_CODE) if SYSTEM_CODE in self.roles else None

    def span(self, m: int) -> tuple[int, int]:
        return self.starts[m - self._first], self.ends[m - self._first]

    def size(self, m: int) -> int:
        """Tokens of message m."""
        return self.ends[m - self._first] - self.starts[m - self._first]

    def header(self, m: int) -> int:
        """Tokens of message m's header, kept whole when a message is shortened or cut."""
        return self.headers[m - self._first]

    def carried(self, m: int) -> bool:
        """Whether message m's first token is the label that ends the turn before it: a role token (role-token
        layout), or a chat template's next role token that the model stops on (GLM: `<|user|>` after a turn trains
        as that turn's stop). A piece that closes before m then takes that token as its last label."""
        return self.carries[m - self._first]

    def tail(self, i: int) -> int:
        """What must follow message i in its piece: the EOS after the last, else the token that ends its turn where
        the next message opens with it (`carried`)."""
        return self.tails[i]

    def reserve(self, i: int) -> int:
        """The least body a piece that opens at message i needs beside its context."""
        return self.headers[i] + self.tails[i] + 1

    def prompt_before(self, i: int) -> int | None:
        """The user message that prompts message i: the last one before it (None where there is none)."""
        k = i - 1
        while k >= 0 and self.roles[k] != USER_CODE:
            k -= 1
        return self._first + k if k >= 0 else None
