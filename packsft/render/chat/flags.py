"""Train flags and message spans (token positions) of one rendered record, from its token offsets and layout.

    message 0:  <|im_start|> user \n  Hi <|im_end|> \n
                |<--- header ---->|
    message 1:  <|im_start|> assistant \n  Yo <|im_end|>  \n
                |<------ header ------->|  |<-trained->|

A message's span runs from its start to the next message's start (the last one's to the end of its turn);
its header is what lies before its body. `mask="all"` trains every message, `mask="assistant_only"` what each
assistant turn generates (chat_layout.Layout.generated).
"""

from __future__ import annotations

import numpy as np

from packsft.read.records import ASSISTANT, USER, Conversation
from packsft.render.chat.layout import Layout

# Train flags of one record, and its message spans: (starts, ends, header lengths, unprompted).
FlagsAndSpans = tuple[np.ndarray, tuple[list[int], list[int], list[int], bool]]

def text_flags(ids: np.ndarray, offsets: np.ndarray, conv: Conversation, bounds: list[tuple[int, int]]) -> FlagsAndSpans:
    """A document (one TEXT message) trains all but its first token; a plain prompt-completion row (two) trains
    the completion and the EOS."""
    n = len(ids)
    flags = np.zeros(n, np.uint8)
    token_starts = offsets[:, 0]
    firsts = [int(np.searchsorted(token_starts, lo, side="left")) for lo, _ in bounds]
    for i, first in enumerate(firsts):
        if conv.trains(i):
            stop = firsts[i + 1] if i + 1 < len(firsts) else n
            flags[first:stop] = 1
    flags[0] = 0
    ends = firsts[1:] + [n - 1]
    return flags, (firsts, ends, [0] * len(firsts), False)


def flags_and_spans(
    ids: np.ndarray, offsets: np.ndarray, conv: Conversation, layout: Layout, mask: str, unprompted: str,
) -> FlagsAndSpans:
    """Train flags of one rendered record and its message spans (token positions)."""
    n = len(ids)
    flags = np.zeros(n, np.uint8)
    roles = [role for role, _ in conv.messages]
    token_starts, token_ends = offsets[:, 0], offsets[:, 1]
    first_user = roles.index(USER) if USER in roles else len(roles)
    is_unprompted = ASSISTANT in roles[:first_user]
    masked_before = first_user if (unprompted == "mask" and is_unprompted) else 0

    def token_at(x: int) -> int:  # the first token starting at or after character x (a message boundary)
        return int(np.searchsorted(token_starts, x, side="left"))

    def token_over(x: int) -> int:  # the first token ending after character x (a generated span starts there)
        return int(np.searchsorted(token_ends, x, side="right"))

    starts = [token_at(x) for x in layout.starts]
    ends = starts[1:] + [n]
    bodies = [min(token_over(x), end) for x, end in zip(layout.bodies, ends)]
    for i, span in enumerate(layout.generated):
        if i < masked_before or not conv.trains(i):
            continue
        if mask == "all":
            flags[starts[i]:ends[i]] = 1
        elif span is not None and roles[i] == ASSISTANT:
            flags[token_over(span[0]):token_at(span[1])] = 1
    if mask == "all":
        for i in range(max(masked_before, 0), len(roles)):
            if conv.trains(i) and roles[i] != ASSISTANT:
                flags[starts[i]:ends[i]] = 1
        if masked_before == 0 and len(roles):
            flags[token_at(layout.head_end):starts[0]] = 1
    flags[0] = 0  # the first token of a conversation is never a label (it starts a segment)
    # The last message's span ends where the rendering's tail (after its end-of-turn) begins.
    if roles:
        ends[-1] = max(starts[-1], min(n, token_at(layout.generated[-1][1]) if layout.generated[-1] else n))
    headers = [max(body - start, 0) for body, start in zip(bodies, starts)]
    return flags, (starts, ends, headers, is_unprompted)
