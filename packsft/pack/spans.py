"""Where one conversation's messages lie in the batch (`MessageSpans`), read by the parts of the split."""

from __future__ import annotations

from packsft.render.batch import RenderedBatch


class MessageSpans:
    """Where conversation `conv`'s messages lie in the batch, and what a piece must keep beside each."""

    def __init__(self, batch: RenderedBatch, conv: int, capacity: int) -> None:
        self.batch, self.capacity = batch, capacity
        self.start, self.end = int(batch.conv_offsets[conv]), int(batch.conv_offsets[conv + 1])
        self.msgs = list(range(int(batch.conv_msg_offsets[conv]), int(batch.conv_msg_offsets[conv + 1])))
        self.head_end = int(batch.msg_starts[self.msgs[0]]) if self.msgs else self.end
        # Role-token layout: a message's first token is its whole header and ends the previous turn.
        self.role_tokens = batch.mode == "roles"

    def span(self, m: int) -> tuple[int, int]:
        return int(self.batch.msg_starts[m]), int(self.batch.msg_ends[m])

    def header(self, m: int) -> int:
        """Tokens of message m's header, kept whole when a message is shortened or cut."""
        lo, hi = self.span(m)
        if self.role_tokens:
            return min(1, hi - lo)
        return min(max(int(self.batch.msg_headers[m]), 0), hi - lo, self.capacity // 4)

    def tail(self, i: int) -> int:
        """What must follow message i in its piece: the EOS after the last, else the next role token."""
        return self.end - self.span(self.msgs[i])[1] if i == len(self.msgs) - 1 else int(self.role_tokens)

    def reserve(self, i: int) -> int:
        """The least body a piece that opens at message i needs beside its context."""
        return self.header(self.msgs[i]) + self.tail(i) + 1
