"""Where each message, and each span the model generates, lies in a chat template's rendering.

Templates rewrite what they are given: Qwen3 moves `<think>` blocks out of content, drops reasoning from
turns before the last user message and adds an empty think block to the last turn; others `| trim`.
So spans are found from the template's own renderings, never by searching for a content's text:

    T   = render(messages)                                   the rendering that is packed
    R_i = render(messages[:i])                               message i starts where R_i stops agreeing with T
    P_k = render(messages[:k], add_generation_prompt=True)   assistant k's generated text starts where P_k's
                                                             generation prompt stops agreeing with T, and ends
                                                             with the last special token before message k+1

    T:   <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\nYo<|im_end|>\\n
    R_1: <|im_start|>user\\nHi<|im_end|>\\n
    P_1: <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n
         |<---------- message 0 --------->|<------------------ message 1 ---------------------------->|
                                           header (prompt)      |<----- generated (trained) ------->|

Where R_i renders message i-1 differently from T (it is the last message there; Qwen3 adds a think block),
message i starts after the longest end of R_i that T holds. A generated span ends with the first stop token
after its prompt (`Markers`); the template's trailer (text after the last message whatever it is) is no part
of any message.

Cost: a conversation of n messages needs about 1.5 n renderings; skeleton.py shares them between records of
one shape. Each is of a prefix, so a trace of n messages renders ~n²/2 messages in all, unless its template is proven
to render a turn from the last question before it on whatever precedes (`Windows`): then R_{k+1} of turn k is rendered
from there.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A template renders a message list, with or without the generation prompt (tools and kwargs bound).
Render = Callable[[list[dict[str, Any]], bool], str]
Span = tuple[int, int]

HOLE = "\ue000{}\ue001"
HOLE_PATTERN = re.compile("\ue000(\\d+)\ue001")
# The content of a message that stands in for one the template cannot be rendered without (_refused_boundary).
STAND_IN_CONTENT = "\ue002stand-in\ue003"
# Text that resumes a message's rendering right where two renderings part is taken as that message's own rest
# (and not a closing that depends on what follows, such as a newline) from this many characters, or a special token.
RESUMED_CHARS = 4


@dataclass(frozen=True)
class Markers:
    """The tokenizer's special-token strings (`specials`), the tokens its model stops generating on (`stops`: EOS
    and generation_config.json's eos list), and the text the template appends after the last message whatever it
    is (`trailer`: Phi-3.5's EOS, Command-R7B's generation prompt; per tools and kwargs, facts.py)."""

    specials: re.Pattern[str] | None = None
    stops: re.Pattern[str] | None = None
    trailer: str = ""

    def with_trailer(self, trailer: str) -> Markers:
        return Markers(self.specials, self.stops, trailer)


# How an assistant turn's generated span ends: with a stop token, with another special token the template closes the
# turn with (not one the model stops on, e.g. gpt-oss's <|end|> in history), or with none (GLM's last turn).
STOP, OTHER, NONE = "stop", "other", "none"


@dataclass
class Layout:
    """Character positions in one rendering (`text`); per message i of n:

    starts[i]     where message i's span starts (message 0's: `head_end`; what precedes is the conversation's
                  head: BOS, and whatever the template puts before the first message, e.g. a tools block)
    bodies[i]     where its header ends: for an assistant turn the end of the generation prompt
    generated[i]  assistant turns: [start, end) of what the model generates, through its end-of-turn token
    rewritten[i]  assistant turns the template renders otherwise when they are not the last message, or after
                  history its generation prompt shows otherwise
    endings[i]    assistant turns: how the generated span ends (STOP, OTHER or NONE)
    data          spans of the record's own strings (a special-token string there is plain text)
    """

    text: str
    head_end: int
    starts: list[int]
    bodies: list[int]
    generated: list[Span | None]
    rewritten: list[bool]
    data: list[Span] = field(default_factory=list)
    endings: list[str | None] = field(default_factory=list)
    appended: str = ""  # a stop token appended after the rendering (ChatRenderer._stopped)


def common_prefix(a: str, b: str, start: int = 0) -> int:
    """Length of the longest common prefix of a[start:] and b[start:] (C-speed slice comparisons)."""
    n = min(len(a), len(b))
    if a[start:n] == b[start:n]:
        return n - start
    lo, hi = start, n  # a[start:lo] == b[start:lo]; a[lo:hi] != b[lo:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo - start


def analyse(render: Render, messages: list[dict[str, Any]], markers: Markers,
            head: Callable[[str], int], text: str | None = None, prompt: str | None = None,
            fixed_prompt: bool = False, rules: LocalRules | None = None, history: bool = True,
            windows: Windows | None = None) -> Layout:
    """The layout of `messages` as `render` renders them (see the module docstring).

    Args:
        head: where the first message starts in a rendering.
        prompt: the generation prompt where the template cannot render the conversation before a turn
            (an assistant turn that opens the conversation: most templates refuse no message at all).
        fixed_prompt: the template's generation prompt is `prompt` whatever precedes it (proven on probes by the
            caller): P_k is not rendered.
        rules: where messages start in a skeleton without rendering prefixes (`LocalRules`, proven on probes by
            the caller); R_i is rendered only where they do not tell, or where the template refuses R_i.
        history: check whether each turn's generation prompt shows the conversation before it as the rendering
            does (False where the caller proved on probes that the template always does: R_k is then not rendered).
        windows: where a turn's rendering as the last message is found from the conversation since the last user
            message before it (`Windows`, proven on probes by the caller): R_{k+1} is then not rendered whole.
    """
    text = render(messages, False) if text is None else text
    n = len(messages)
    starts: list[int] = [head(text)]
    prefixes: dict[int, str] = {}

    def prefix(i: int) -> str:
        if i not in prefixes:
            prefixes[i] = render(messages[:i], False)
        return prefixes[i]

    holes = _hole_positions(messages, text)
    for i in range(1, n):
        found = rules.start(text, holes, messages, i, starts[-1]) if rules is not None else -1
        if found < 0:
            try:
                rendered = prefix(i)
            except Exception:  # Llama 3 refuses a system message alone when there are tools
                found = _refused_boundary(render, messages, i, text, markers, starts[-1])
            else:
                found = _boundary(rendered, text, markers,
                                  _anchors(messages[i - 1], rendered, text, holes[i - 1], starts[-1]))
        starts.append(max(found, starts[-1]))
    layout = Layout(text, starts[0], starts, list(starts), [None] * n, [False] * n, endings=[None] * n)
    for k, message in enumerate(messages):
        if message.get("role") == "assistant":
            as_last = functools.partial(_as_last, windows, layout, messages, k, prefix)
            before = functools.partial(_as_last, windows, layout, messages, k - 1, prefix) if k and history else None
            _lay_out_turn(layout, render, messages, k, prefix, as_last, markers, prompt, fixed_prompt, before)
        else:
            # The header is what precedes the content where the content is rendered as given (pack/split.py keeps
            # it whole when it shortens a long question); else the message has no header of its own.
            end = starts[k + 1] if k + 1 < n else len(text)
            content = message.get("content")
            at = text.find(content, starts[k], end) if isinstance(content, str) and content else -1
            layout.bodies[k] = at if at >= 0 else starts[k]
    return layout


def _lay_out_turn(layout: Layout, render: Render, messages: list[dict[str, Any]], k: int,
                  prefix: Callable[[int], str], as_last: Callable[[], str | None], markers: Markers,
                  prompt: str | None, fixed_prompt: bool, history: Callable[[], str | None] | None = None) -> None:
    """Assistant turn k: where its generated span starts (after its generation prompt) and ends (through the token
    the model stops with), and whether the template renders it otherwise when it is the last message, or shows the
    conversation before it otherwise when it prompts it (`history`: R_k, the rendering of the conversation before the
    turn; None: not checked)."""
    text, starts, n = layout.text, layout.starts, len(messages)
    end = starts[k + 1] if k + 1 < n else len(text)
    own = prompt if fixed_prompt and prompt is not None else \
        _generation_prompt(render, messages, k, _or_none(prefix, k) if k else None, markers.trailer)
    chosen = own if own is not None else prompt
    body = _after_prompt(text, starts[k], end, chosen, markers.specials)
    layout.bodies[k] = body
    stop, ending = _end_of_turn(text, body, end, markers)
    layout.generated[k], layout.endings[k] = (body, stop), ending
    before = history() if history is not None else None
    if before is not None and not text.startswith(without_trailer(before, markers.trailer)):
        # The generation prompt shows the conversation before the turn otherwise than the rendering does (gpt-oss
        # keeps earlier analysis in a tool loop's prompt, Mistral Nemo the system message): the turn is trained
        # after other context than the model is prompted with.
        layout.rewritten[k] = True
    if k + 1 < n:
        last = as_last()
        if last is None:
            return
        last = without_trailer(last, markers.trailer)
        start = starts[k]
        if not last.startswith(text[:start]):  # history rendered otherwise before the turn (Mistral Nemo's tools)
            before = _or_none(prefix, k) if k else None
            start = _boundary(before, last, markers) if before is not None else start
        final_body = _after_prompt(last, start, len(last), chosen, markers.specials)
        final = last[final_body:_end_of_turn(last, final_body, len(last), markers)[0]]
        # A stop the turn ends with only because a message follows (GLM's next role token) is no rewrite.
        layout.rewritten[k] |= _unstopped(final, markers) != _unstopped(text[body:stop], markers)


def _as_last(windows: Windows | None, layout: Layout, messages: list[dict[str, Any]], k: int,
             prefix: Callable[[int], str]) -> str | None:
    """The rendering of the conversation through message k, R_{k+1} (None where the template refuses it): from its
    window where `windows` tell, else rendered whole."""
    found = windows.as_last(layout.text, layout.starts, messages, k) if windows is not None else None
    return found if found is not None else _or_none(prefix, k + 1)


@dataclass(frozen=True)
class Windows:
    """The rendering of a skeleton that ends with message k, from the rendering of the conversation since the last
    message of `role` before it (message q, q > 0) and the whole conversation's rendering T:

        render(M[:k+1]) == T[:starts[q]] + W[head(W):]        W = render(M[q:k+1])

    so that a turn is rendered as the last message without rendering the conversation before its window (a long
    agentic trace then costs a window per turn, not its whole history per turn: quadratic in its messages). Holds
    where the template renders messages from a user message on whatever precedes it (ChatML templates: Qwen3
    counts reasoning from the last user message), proven on probes by the caller (facts.py); not where the template
    moves earlier messages into a later one (Mistral's system message, Llama 3's tools).

    render: renders a window (a conversation that opens with `role`); head: where its first message starts there.
    """

    role: str
    render: Callable[[list[dict[str, Any]]], str]
    head: Callable[[str], int]

    def opening(self, messages: list[dict[str, Any]], k: int) -> int:
        """The window's first message for a conversation through message k: the last `role` before k (0: none)."""
        return next((i for i in range(k - 1, 0, -1) if messages[i].get("role") == self.role), 0)

    def as_last(self, text: str, starts: list[int], messages: list[dict[str, Any]], k: int) -> str | None:
        """render(messages[:k+1]) from its window, where `text` and `starts` are the whole conversation's; None where
        no window opens after the first message or the template refuses the window."""
        q = self.opening(messages, k)
        if q <= 0:
            return None
        try:
            window = self.render(messages[q:k + 1])
        except Exception:
            return None
        return text[:starts[q]] + window[self.head(window):]


def _unstopped(generated: str, markers: Markers) -> str:
    """A generated text without the stop token it ends with."""
    if markers.stops is not None:
        for match in markers.stops.finditer(generated, max(0, len(generated) - 64)):
            if match.end() == len(generated):
                return generated[:match.start()]
    return generated


def _or_none(prefix: Callable[[int], str], i: int) -> str | None:
    """The prefix rendering, or None where the template refuses it (Llama 3 with tools and a system message alone)."""
    try:
        return prefix(i)
    except Exception:
        return None


def _hole_positions(messages: list[dict[str, Any]], text: str) -> list[tuple[int, int] | None]:
    """Per message of a skeleton: the start of its first rendered placeholder and the end of its last (None: none)."""
    at: dict[int, tuple[int, int]] = {}
    for match in HOLE_PATTERN.finditer(text):
        at.setdefault(int(match.group(1)), match.span())
    out: list[tuple[int, int] | None] = []
    for message in messages:
        spans = [at[int(index)] for index in HOLE_PATTERN.findall(json.dumps(message, ensure_ascii=False)) if int(index) in at]
        out.append((min(s for s, _ in spans), max(e for _, e in spans)) if spans else None)
    return out


@dataclass(frozen=True)
class LocalRules:
    """Where message i starts in a skeleton, read from the text between the placeholders of messages i-1 and i:

    opener  the special token that opens a message (`<|im_start|>`): message i starts at the last one there;
    joins   where none is (Qwen3 renders a run of tool results as one turn), per (role before, role): the text
            found between their placeholders in a probe, and where message i starts in it. Used only where the
            skeleton has exactly that text there.
    """

    opener: str
    joins: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def start(self, text: str, holes: list[tuple[int, int] | None], messages: list[dict[str, Any]], i: int,
              previous: int) -> int:
        """Where message i starts, or -1 where these rules do not tell."""
        before, here = holes[i - 1], holes[i]
        if here is None:
            return -1
        lo = max(previous, before[1]) if before is not None else previous
        if lo > here[0]:
            return -1
        found = text.rfind(self.opener, lo, here[0])
        if found >= 0 or before is None:
            return found
        join = self.joins.get((messages[i - 1].get("role", ""), messages[i].get("role", "")))
        if join is not None and text[before[1]:here[0]] == join[0]:
            return before[1] + join[1]
        return -1


def _anchors(message: dict[str, Any], prefix: str, text: str, hole: tuple[int, int] | None,
             previous: int) -> tuple[int, int]:
    """Where `prefix` and the rendering are compared from (in each): from the start where they agree through the
    message's content; else from the end of its content in each (its last placeholder in a skeleton), so that a
    template that renders earlier history otherwise in `prefix` (Mistral Nemo moves the system message into the last
    user message) still finds where the message ends."""
    if hole is not None:
        indices = HOLE_PATTERN.findall(json.dumps(message, ensure_ascii=False))
        found = [at + len(HOLE.format(index)) for index in indices if (at := prefix.rfind(HOLE.format(index))) >= 0]
        anchors = (max(found), hole[1]) if found else (0, 0)
    else:
        content = message.get("content")
        content = content if isinstance(content, str) else ""
        # Only a content the prefix renders once anchors (":" would match inside a tool call's arguments).
        mine = prefix.rfind(content) if content and prefix.count(content) == 1 else -1
        theirs = text.find(content, previous) if mine >= 0 else -1
        anchors = (mine + len(content), theirs + len(content)) if theirs >= 0 else (0, 0)
    if anchors[0] and text.startswith(prefix[:anchors[0]]):
        return 0, 0
    return anchors


def _boundary(prefix: str, text: str, markers: Markers, anchors: tuple[int, int] = (0, 0)) -> int:
    """Where the message after `prefix` starts in `text`, comparing the two from `anchors` (in prefix, in text).

    Where text continues `prefix` (less the template's trailer): at its end. Where they part in the trailer (Phi-3.5
    appends EOS, Command-R7B its generation prompt): where the trailer starts. Where they part because the last
    message renders otherwise when it is last (Qwen3 inserts a think block), text goes on at once with the rest of
    that message's rendering in `prefix`: the message ends where that rest ends, with text's own closing tokens
    where only those differ (gpt-oss closes the last turn with <|return|>, earlier ones with <|end|>). Else (the
    message's closing depends on what follows: Qwen3 closes a tool result only after the last of a run) it ends
    where they part.
    """
    specials = markers.specials
    base, at = anchors
    tail = prefix[base:]
    agreed = common_prefix(tail, text[at:]) if at else common_prefix(tail, text)
    trailer = markers.trailer
    if trailer and tail.endswith(trailer) and agreed >= len(tail) - len(trailer):
        return at + len(tail) - len(trailer)
    if agreed == len(tail):
        return at + agreed
    agreed = at + min(back_off(tail, agreed, specials), back_off(text[at:], agreed, specials))
    rest = tail[agreed - at:]
    resumed = _resumed(rest, text, agreed)
    if resumed and (len(resumed) >= RESUMED_CHARS or (specials is not None and specials.search(resumed))):
        return agreed + len(resumed)
    return _closed_otherwise(rest, text, agreed, specials)


def _closed_otherwise(rest: str, text: str, at: int, specials: re.Pattern[str] | None) -> int:
    """Where the last message of a prefix ends in text when it closes with other special tokens there (`rest` is the
    prefix from where the two part): after as many of text's special tokens, once text has resumed the rest of the
    message before its closing; else `at`."""
    closing = _closing_run(rest, specials)
    if not closing:
        return at
    body = rest[:len(rest) - len(closing)].rstrip()
    body = rest[:len(body)]
    resumed = _resumed(body, text, at) if body else ""
    if body and len(resumed) < min(len(body), RESUMED_CHARS):
        return at
    theirs = _special_run(text, at + len(resumed), specials)
    count = len(specials.findall(closing)) if specials is not None else 0
    if len(theirs) < count:
        return at
    return at + len(resumed) + len("".join(theirs[:count]))


def _closing_run(rest: str, specials: re.Pattern[str] | None) -> str:
    """The special tokens (and whitespace) `rest` ends with."""
    end = len(rest.rstrip())
    start = end
    while specials is not None:
        found = [m for m in specials.finditer(rest, max(0, start - 64), start) if m.end() == start]
        if not found:
            break
        start = found[-1].start()
    return rest[start:] if start < end else ""


def _refused_boundary(render: Render, messages: list[dict[str, Any]], i: int, text: str, markers: Markers,
                      previous: int) -> int:
    """Where message i starts when the template refuses the conversation before it: after the last stop token before
    the point where a rendering with a stand-in message i parts from `text` (message i's header then may hold what
    the template put before its content, e.g. a tools block); raises where the stand-in is refused too."""
    stand_in = {"role": messages[i].get("role", "user"), "content": STAND_IN_CONTENT}
    parted = common_prefix(render([*messages[:i], stand_in], False), text)
    stops = list(markers.stops.finditer(text, previous, parted)) if markers.stops is not None else []
    return stops[-1].end() if stops else back_off(text, parted, markers.specials)


def _special_run(text: str, at: int, specials: re.Pattern[str] | None) -> list[str]:
    """The special tokens that follow one another in text from `at`."""
    run: list[str] = []
    while specials is not None:
        match = specials.match(text, at)
        if match is None:
            break
        run.append(match.group())
        at = match.end()
    return run


def _resumed(tail: str, text: str, at: int) -> str:
    """The longest end of `tail` that `text` continues with at `at` (empty if none)."""
    if at >= len(text):
        return ""
    first = text[at]
    j = tail.find(first)
    while j >= 0:
        if text.startswith(tail[j:], at):
            return tail[j:]
        j = tail.find(first, j + 1)
    return ""


def back_off(text: str, at: int, specials: re.Pattern[str] | None) -> int:
    """`at`, or the start of a special token of `text` that `at` cuts (two texts agree on the `<` of `<|im_end|>`
    and `<tool_response>` by chance)."""
    if specials is None:
        return at
    for match in specials.finditer(text, max(0, at - 32), at + 32):
        if match.start() < at < match.end():
            return match.start()
    return at


def _generation_prompt(render: Render, messages: list[dict[str, Any]], k: int, prefix: str | None,
                       trailer: str = "") -> str | None:
    """What the template adds to prompt assistant turn k (None where that cannot be told apart): the prompted
    rendering past the plain one, less the trailer the plain one ends with (Command-R7B's trailer is its prompt)."""
    try:
        prompted = render(messages[:k], True)
    except Exception:  # a template may refuse to render no message at all
        return None
    if prefix is None:
        try:
            prefix = render(messages[:k], False)
        except Exception:
            return None
    prefix = without_trailer(prefix, trailer)
    return prompted[len(prefix):] if prompted.startswith(prefix) else None


def without_trailer(rendering: str, trailer: str) -> str:
    """The rendering less the template's trailer (Markers.trailer) where it ends with it."""
    return rendering[:len(rendering) - len(trailer)] if trailer and rendering.endswith(trailer) else rendering


def _after_prompt(text: str, start: int, end: int, prompt: str | None, specials: re.Pattern[str] | None) -> int:
    """Where the generated text starts: after the part of the generation prompt that `text` holds at `start` (not
    inside a special token the two agree on the first characters of)."""
    if not prompt:
        return start
    return back_off(text, start + common_prefix(prompt, text[start:end]), specials)


def _end_of_turn(text: str, start: int, end: int, markers: Markers) -> tuple[int, str]:
    """Where the generated span that starts at `start` ends, and how (STOP, OTHER or NONE).

    Through the first stop token in text[start:end], or the one that opens what follows (GLM's next role token);
    else through the last special token there (the template's own end of turn); else at `end`.
    """
    if markers.stops is not None:
        found = markers.stops.search(text, start, end)
        if found is None:
            found = markers.stops.match(text, end)
        if found is not None:
            return found.end(), STOP
    ends = [match.end() for match in markers.specials.finditer(text, start, end)] if markers.specials else []
    return (ends[-1], OTHER) if ends else (end, NONE)
