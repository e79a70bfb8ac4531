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
    first_user = roles.index(USER) if USER in roles else len(roles)
    is_unprompted = ASSISTANT in roles[:first_user]
    masked_before = first_user if (unprompted == "mask" and is_unprompted) else 0

    # Message starts, generated ends and the head's end fall on the first token starting at or after them; bodies and
    # generated starts on the first token ending after them (a generated span starts there). One search each.
    generated = [(i, span) for i, span in enumerate(layout.generated) if span is not None]
    at = np.searchsorted(offsets[:, 0], [*layout.starts, *(end for _, (_, end) in generated), layout.head_end],
                         side="left").tolist()
    over = np.searchsorted(offsets[:, 1], [*layout.bodies, *(start for _, (start, _) in generated)],
                           side="right").tolist()
    starts, head_end = at[:len(roles)], at[-1]
    spans = {i: (over[len(roles) + k], at[len(roles) + k]) for k, (i, _) in enumerate(generated)}
    ends = starts[1:] + [n]
    bodies = [min(body, end) for body, end in zip(over, ends)]
    for i in range(len(roles)):
        if i < masked_before or not conv.trains(i):
            continue
        if mask == "all":
            flags[starts[i]:ends[i]] = 1
        elif i in spans and roles[i] == ASSISTANT:
            flags[spans[i][0]:spans[i][1]] = 1
    if mask == "all":
        for i in range(max(masked_before, 0), len(roles)):
            if conv.trains(i) and roles[i] != ASSISTANT:
                flags[starts[i]:ends[i]] = 1
        if masked_before == 0 and len(roles):
            flags[head_end:starts[0]] = 1
    flags[0] = 0  # the first token of a conversation is never a label (it starts a segment)
    # The last message's span ends where the rendering's tail (after its end-of-turn) begins.
    if roles:
        last = len(roles) - 1
        ends[-1] = max(starts[-1], min(n, spans[last][1] if last in spans else n))
    headers = [max(body - start, 0) for body, start in zip(bodies, starts)]
    return flags, (starts, ends, headers, is_unprompted)
