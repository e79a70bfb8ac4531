"""Where one conversation's messages lie in the batch (`MessageSpans`), read by the parts of the split."""

from __future__ import annotations

from packsft.render.batch import ASSISTANT_CODE, RenderedBatch


class MessageSpans:
    """Where conversation `conv`'s messages lie in the batch, and what a piece must keep beside each."""

    def __init__(self, batch: RenderedBatch, conv: int, capacity: int) -> None:
        self.batch, self.capacity = batch, capacity
        self.start, self.end = int(batch.conv_offsets[conv]), int(batch.conv_offsets[conv + 1])
        first, stop = int(batch.conv_msg_offsets[conv]), int(batch.conv_msg_offsets[conv + 1])
        self.msgs = list(range(first, stop))
        # Each message's span as Python ints, read once (span() is asked hundreds of thousands of times a unit).
        self._first = first
        self._starts, self._ends = batch.msg_starts[first:stop].tolist(), batch.msg_ends[first:stop].tolist()
        self.head_end = self._starts[0] if self.msgs else self.end
        # Role-token layout: a message's first token is its whole header and ends the previous turn.
        self.role_tokens = batch.mode == "roles"

    def span(self, m: int) -> tuple[int, int]:
        return self._starts[m - self._first], self._ends[m - self._first]

    def header(self, m: int) -> int:
        """Tokens of message m's header, kept whole when a message is shortened or cut."""
        lo, hi = self.span(m)
        if self.role_tokens:
            return min(1, hi - lo)
        return min(max(int(self.batch.msg_headers[m]), 0), hi - lo, self.capacity // 4)

    def carried(self, m: int) -> bool:
        """Whether message m's first token is the label that ends the turn before it: a role token (role-token
        layout), or a chat template's next role token that the model stops on (GLM: `<|user|>` after a turn trains
        as that turn's stop). A piece that closes before m then takes that token as its last label."""
        if self.role_tokens:
            return True
        roles, first = self.batch.msg_roles, self.msgs[0] if self.msgs else m
        return m > first and roles[m - 1] == ASSISTANT_CODE and roles[m] != ASSISTANT_CODE and bool(
            self.batch.flags[self.batch.msg_starts[m]])

    def tail(self, i: int) -> int:
        """What must follow message i in its piece: the EOS after the last, else the token that ends its turn where
        the next message opens with it (`carried`)."""
        if i == len(self.msgs) - 1:
            return self.end - self.span(self.msgs[i])[1]
        return int(self.carried(self.msgs[i + 1]))

    def reserve(self, i: int) -> int:
        """The least body a piece that opens at message i needs beside its context."""
        return self.header(self.msgs[i]) + self.tail(i) + 1
