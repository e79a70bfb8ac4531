"""The context planner: which messages re-open a piece of a split conversation, and how much of each fits.

A piece that opens at message i repeats, masked: the system message, the user message that prompts message i,
and the tool exchange right before it; a continuation of a cut turn also repeats the text right before the cut.

Where message i continues a turn that an earlier message opened (`turn_opener`: Gemma 4 renders a tool call, its
results and the answer as one model turn, whose `<|turn>model` header only the call holds), the piece always
repeats that turn from its header on up to the exchange, shortened to the header and its end where it does not fit
whole; without it the answer would read as trained inside the turn before (the user's, or the system's), a text the
model is given (`packsft verify`):

    whole:    .. <|turn>user q<turn|> <|turn>model <|tool_call>call..<tool_call|><|tool_response> result.. answer<turn|>
    piece 2:  .. <|turn>user q<turn|> <|turn>model [.. N tokens omitted]<|tool_response> result.. | answer<turn|>
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

from packsft.config import CONTEXT_SHARE
from packsft.pack.spans import MessageSpans
from packsft.render.batch import ASSISTANT_CODE, SYSTEM_CODE, TOOL_CODE, USER_CODE

# The text before a cut inside a turn, repeated (masked) at the start of its continuation, takes at most
# this share of the row (and the whole context at most CONTEXT_SHARE). Measured on ShareGPT (8 shards,
# GPT-2, L=2048): 1/8 (256 tokens) costs 0.3% more rows than none; the full CONTEXT_SHARE costs 2.7%
# (continuations then add only a quarter of a row of new labels each).
CONTINUATION_SHARE = 0.125


class ContextPlan(NamedTuple):
    """What re-opens a piece at a message (`ContextPlanner.plan`), with the two figures the cut chooser reads of it for
    every boundary it weighs, worked out once."""

    spans: list[ContextSpan]
    results_whole: bool  # the tool results the piece's first turn answers are all among the spans
    length: int  # tokens the spans repeat (beside the head)
    shortens: bool  # a span is shortened, or tool results are left out


class ContextSpan(NamedTuple):
    """A span a piece repeats as context, masked: ids[lo:hi], from message `message` on; whole where it fits in
    `room`, else shortened to its `head` header tokens, its start and its end (pieces.PieceBuilder.add_context)."""

    message: int
    lo: int
    hi: int
    head: int
    room: int
    prompt: bool = False  # the user message that prompts the piece's first turn


@dataclass(frozen=True)
class ContextPlanner:
    """The context of each piece of one conversation, within `share` of a row."""

    spans: MessageSpans
    share: float = CONTEXT_SHARE  # the most of a row that copied context may take
    # The plan per message i, planned once: the cut chooser asks for the same boundaries again and again.
    _plans: dict[int, ContextPlan] = field(default_factory=dict, init=False, compare=False)

    @functools.cached_property
    def budget(self) -> int:
        """The most tokens of a row that copied context may take."""
        return int(self.spans.capacity * self.share)

    def head_room(self, i: int) -> int:
        """Tokens of the conversation's head (BOS, a tools block the template opens with) in a piece that opens at
        message i: all of them, or, where they leave no room for the body (hundreds of tool definitions in a short
        row), the context budget (pieces.PieceBuilder.add_shortened keeps the head's first token, its start and its end)."""
        return self._head_room(self.reserve(i))

    def _head_room(self, reserve: int) -> int:
        s = self.spans
        head, fits = s.head_end - s.start, s.capacity - reserve
        return head if head <= fits else max(min(self.budget, fits), 0)

    def reserve(self, i: int) -> int:
        """The least a piece that opens at message i needs beside its head and context: its body's least
        (MessageSpans.reserve) and, where message i continues an earlier message's turn (`turn_opener`), that
        message's header and one token of it."""
        opener = self.turn_opener(i)
        return self.spans.reserve(i) + (self.spans.header(opener) + 1 if opener is not None else 0)

    def turn_opener(self, i: int) -> int | None:
        """The message whose header opens the turn that a piece opening at message i continues, where that turn is
        no message's own: message i (or the answer after the run of tool results it opens with) is an assistant
        message without a header, after tool results; its turn opens at the assistant message that called them
        (or, where that one has no header either, the one before it that does). None where message i opens its own
        turn, or its turn's header is in the user message that prompts it (Mistral's `[/INST]`)."""
        s = self.spans
        if s.role_tokens:
            return None
        roles, headers, first, last = s.batch.msg_roles, s.batch.msg_headers, s.msgs[0], s.msgs[-1]
        m = s.msgs[i]
        while m < last and roles[m] == TOOL_CODE:
            m += 1
        if roles[m] != ASSISTANT_CODE or headers[m] != 0:
            return None
        while headers[m] == 0:  # an assistant message without a header: its turn opens at the call before its results
            call = m - 1
            while call >= first and roles[call] == TOOL_CODE:
                call -= 1
            if call == m - 1 or call < first or roles[call] != ASSISTANT_CODE:
                return None
            m = call
        return m

    def plan(self, i: int) -> tuple[list[ContextSpan], bool]:
        """`_plan(i)`, planned once per message (the list is shared: do not change it)."""
        planned = self._planned(i)
        return planned.spans, planned.results_whole

    def _planned(self, i: int) -> ContextPlan:
        planned = self._plans.get(i)
        if planned is None:
            context, results_whole = self._plan(i)
            length = sum(min(part.hi - part.lo, part.room) for part in context)
            shortens = not results_whole or any(part.hi - part.lo > part.room for part in context)
            planned = self._plans[i] = ContextPlan(context, results_whole, length, shortens)
        return planned

    def _plan(self, i: int) -> tuple[list[ContextSpan], bool]:
        """The spans that re-open a piece at message i: the system message, the prompting user message and the
        tool exchange before the turn (`_exchange`), and, where message i continues a turn an earlier message opened
        (`turn_opener`), that turn so far (`_turn_so_far`); and whether the tool results the piece's first turn
        answers are all among them.

        The context leaves at least `reserve(i)` tokens of the row for the body; when the system and user
        messages do not both fit, the question matters more than the system message: the system message
        gets at most a quarter. The tool exchange gets what they leave, the turn so far what that leaves (at least
        its header and a token, which `reserve(i)` keeps in the row).
        """
        s, first_msg = self.spans, self.spans.msgs[i]
        system = s.system if s.system is not None and s.system < first_msg else None
        prompt = s.prompt_before(i) if s.roles[i] != USER_CODE else None
        reserve = self.reserve(i)
        budget = min(self.budget, s.capacity - reserve) - self._head_room(reserve)
        system_size = s.size(system) if system is not None else 0
        prompt_size = s.size(prompt) if prompt is not None else 0
        system_room, prompt_room = system_size, prompt_size
        if system_size + prompt_size > budget:
            if system is not None:
                system_room = min(system_size, budget // 4 if prompt is not None else budget)
            if prompt is not None:
                prompt_room = budget - system_room
        context = [] if system is None else [self._message(system, system_room)]
        if prompt is not None:
            context.append(self._message(prompt, prompt_room, prompt=True))
        left = budget - system_room - prompt_room
        exchange, results_whole = self._exchange(first_msg, prompt, left)
        turn = self._turn_so_far(i, exchange, left - sum(size for _, size in exchange))
        return context + turn + [self._message(m, size) for m, size in exchange], results_whole

    def _message(self, m: int, room: int, *, prompt: bool = False) -> ContextSpan:
        lo, hi = self.spans.span(m)
        return ContextSpan(m, lo, hi, self.spans.header(m), room, prompt)

    def _turn_so_far(self, i: int, exchange: list[tuple[int, int]], room: int) -> list[ContextSpan]:
        """For a piece that opens at message i inside a turn an earlier message opened (`turn_opener`), and an
        exchange that does not start with that message: the turn from its header to the exchange (or to message
        i), within `room` but at least its header and a token. Shortened, it keeps the header and the text right
        before the exchange, after the omission marker."""
        opener = self.turn_opener(i)
        if opener is None or (exchange and exchange[0][0] == opener):
            return []
        lo, head = self.spans.span(opener)[0], self.spans.header(opener)
        hi = self.spans.span(exchange[0][0] if exchange else self.spans.msgs[i])[0]
        return [ContextSpan(opener, lo, hi, head, max(room, head + 1))]

    def _exchange(self, first_msg: int, prompt: int | None, room: int) -> tuple[list[tuple[int, int]], bool]:
        """For a piece that opens at a tool result or at the turn after one: the exchange right before `first_msg`
        (the run of tool results there and the assistant turn that called them; earlier rounds are not repeated),
        whole messages only and the latest first, as many as fit in `room`, as (message, size); and whether the run
        of tool results right before `first_msg` is among them."""
        first, roles = self.spans.msgs[0], self.spans.roles  # roles by index in the conversation
        after_results = first_msg > first and roles[first_msg - first - 1] == TOOL_CODE
        if not after_results and roles[first_msg - first] != TOOL_CODE:
            return [], True
        run = 0
        while first_msg - run - 1 >= first and roles[first_msg - run - 1 - first] == TOOL_CODE:
            run += 1
        taken: list[tuple[int, int]] = []
        lower = max(prompt if prompt is not None else first - 1, first_msg - run - 2)
        for m in range(first_msg - 1, lower, -1):
            lo, hi = self.spans.span(m)
            if roles[m - first] == SYSTEM_CODE or hi - lo > room:
                break
            taken.append((m, hi - lo))
            room -= hi - lo
        return taken[::-1], len(taken) >= run

    def length(self, i: int) -> int:
        """Tokens of context a piece that opens at message i repeats (beside its head)."""
        return self._planned(i).length

    def would_shorten(self, i: int) -> bool:
        """Whether a piece re-opened at message i would shorten its context (or leave out tool results)."""
        return self._planned(i).shortens

    def question_room(self, m: int, length: int, tail: int) -> int:
        """Room for the end of message m, a question too long to fit whole, in a piece of `length` tokens so far."""
        return min(max(self.budget - length, self.spans.header(m) + 1), self.spans.capacity - length - tail)

    def continuation_room(self, length: int, tail: int) -> int:
        """Room for the text before a cut inside a turn, repeated at the start of its continuation."""
        capacity = self.spans.capacity
        return min(self.budget - length, capacity - length - tail - 1, int(capacity * CONTINUATION_SHARE))
