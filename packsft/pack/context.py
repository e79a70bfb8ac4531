"""The context planner: which messages re-open a piece of a split conversation, and how much of each fits.

A piece that opens at message i repeats, masked: the system message, the user message that prompts message i,
and the tool exchange right before it; a continuation of a cut turn also repeats the text right before the cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from packsft.config import CONTEXT_SHARE
from packsft.pack.spans import MessageSpans
from packsft.render.batch import SYSTEM_CODE, TOOL_CODE, USER_CODE

# The text before a cut inside a turn, repeated (masked) at the start of its continuation, takes at most
# this share of the row (and the whole context at most CONTEXT_SHARE). Measured on ShareGPT (8 shards,
# GPT-2, L=2048): 1/8 (256 tokens) costs 0.3% more rows than none; the full CONTEXT_SHARE costs 2.7%
# (continuations then add only a quarter of a row of new labels each).
CONTINUATION_SHARE = 0.125


@dataclass(frozen=True)
class ContextPlanner:
    """The context of each piece of one conversation, within `share` of a row."""

    spans: MessageSpans
    share: float = CONTEXT_SHARE  # the most of a row that copied context may take

    @property
    def budget(self) -> int:
        """The most tokens of a row that copied context may take."""
        return int(self.spans.capacity * self.share)

    def head_room(self, i: int) -> int:
        """Tokens of the conversation's head (BOS, a tools block the template opens with) in a piece that opens at
        message i: all of them, or, where they leave no room for the body (hundreds of tool definitions in a short
        row), the context budget (pieces.PieceBuilder.add_shortened keeps the head's first token, its start and its end)."""
        s = self.spans
        head, fits = s.head_end - s.start, s.capacity - s.reserve(i)
        return head if head <= fits else max(min(self.budget, fits), 0)

    def plan(self, i: int) -> tuple[list[tuple[int, int]], bool]:
        """(message, room) of the messages that re-open a piece at message i: the system message, the
        prompting user message and the tool exchange before the turn (`_exchange`); and whether the tool
        results the piece's first turn answers are all among them.

        The context leaves at least `reserve(i)` tokens of the row for the body; when the system and user
        messages do not both fit, the question matters more than the system message: the system message
        gets at most a quarter. The tool exchange gets what they leave.
        """
        s, first_msg = self.spans, self.spans.msgs[i]
        roles = s.batch.msg_roles
        system = next((m for m in s.msgs if m < first_msg and roles[m] == SYSTEM_CODE), None)
        prompt = None
        if roles[first_msg] != USER_CODE:
            prompt = next((m for m in reversed(s.msgs) if m < first_msg and roles[m] == USER_CODE), None)
        budget = min(self.budget, s.capacity - s.reserve(i)) - self.head_room(i)
        size = {m: s.span(m)[1] - s.span(m)[0] for m in (system, prompt) if m is not None}
        rooms = dict(size)
        if sum(size.values()) > budget:
            if system is not None:
                rooms[system] = min(size[system], budget // 4 if prompt is not None else budget)
            if prompt is not None:
                rooms[prompt] = budget - (rooms[system] if system is not None else 0)
        context = [(m, rooms[m]) for m in (system, prompt) if m is not None]
        exchange, results_whole = self._exchange(first_msg, prompt, budget - sum(rooms.values()))
        return context + [(m, s.span(m)[1] - s.span(m)[0]) for m in exchange], results_whole

    def _exchange(self, first_msg: int, prompt: int | None, room: int) -> tuple[list[int], bool]:
        """For a piece that opens at a tool result or at the turn after one: the exchange right before `first_msg`
        (the run of tool results there and the assistant turn that called them; earlier rounds are not repeated),
        whole messages only and the latest first, as many as fit in `room`; and whether the run of tool results
        right before `first_msg` is among them."""
        msgs, roles = self.spans.msgs, self.spans.batch.msg_roles
        after_results = first_msg > msgs[0] and roles[first_msg - 1] == TOOL_CODE
        if not after_results and roles[first_msg] != TOOL_CODE:
            return [], True
        run = 0
        while first_msg - run - 1 >= msgs[0] and roles[first_msg - run - 1] == TOOL_CODE:
            run += 1
        taken: list[int] = []
        lower = max(prompt if prompt is not None else msgs[0] - 1, first_msg - run - 2)
        for m in range(first_msg - 1, lower, -1):
            lo, hi = self.spans.span(m)
            if roles[m] == SYSTEM_CODE or hi - lo > room:
                break
            taken.append(m)
            room -= hi - lo
        return taken[::-1], len(taken) >= run

    def length(self, i: int) -> int:
        """Tokens of context a piece that opens at message i repeats (beside its head)."""
        context, _ = self.plan(i)
        return sum(min(self.spans.span(m)[1] - self.spans.span(m)[0], room) for m, room in context)

    def would_shorten(self, i: int) -> bool:
        """Whether a piece re-opened at message i would shorten its context (or leave out tool results)."""
        context, results_whole = self.plan(i)
        return not results_whole or any(self.spans.span(m)[1] - self.spans.span(m)[0] > room for m, room in context)

    def question_room(self, m: int, length: int, tail: int) -> int:
        """Room for the end of message m, a question too long to fit whole, in a piece of `length` tokens so far."""
        return min(max(self.budget - length, self.spans.header(m) + 1), self.spans.capacity - length - tail)

    def continuation_room(self, length: int, tail: int) -> int:
        """Room for the text before a cut inside a turn, repeated at the start of its continuation."""
        capacity = self.spans.capacity
        return min(self.budget - length, capacity - length - tail - 1, int(capacity * CONTINUATION_SHARE))
