"""What a chat template renders around any conversation, found once per template from probe renderings.

    head:            <|im_start|>system\\n# Tools ...<|im_end|>\\n   before the first message
    generic prompt:  <|im_start|>assistant\\n                        after a one-message conversation
    fixed prompt:    the generic prompt follows every conversation prefix of the probes
    local rules:     every message opens with the prompt's special token (chat_layout.LocalRules)
    windows:         a turn renders from the last question before it on whatever precedes (layout.Windows)

`TemplateFacts` holds these and the per-shape skeleton layouts with the skeletons' prefix renderings
(layout.py), shared by the ChatRenderers of one process: a worker packs many units.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from packsft.read.records import ASSISTANT, SYSTEM, TOOL, USER
from packsft.render.chat.kept import KeptLayouts, layouts_key
from packsft.render.chat.layout import (
    HOLE,
    HOLE_PATTERN,
    Layout,
    LocalRules,
    Markers,
    Render,
    Windows,
    analyse,
    back_off,
    common_prefix,
    without_trailer,
)
from packsft.render.chat.probes import JOIN_PROBE, PROBE_MARK, WINDOW_PROBES, probe_records
from packsft.render.chat.sandbox import template_data
from packsft.render.chat.skeleton import (
    STAND_IN_TOOLS,
    PrefixRenderings,
    PrefixTexts,
    SkeletonCache,
    Splicer,
    shape_key,
    skeleton,
)
from packsft.render.chat.trace import Trace, Tracer, filled
from packsft.render.tokenizer import PackTokenizer

# A template bound to tools and kwargs: ChatRenderer.bind.
Bind = Callable[[Any, Mapping[str, Any] | None], Render]
# Heads are keyed by tools: records with tools of their own would fill the store without this bound.
HEADS_CACHE_SIZE = 4096


class TemplateFacts:
    """What one template renders around any conversation (module docstring), found on first need and kept;
    heads and local rules per tools and kwargs, heads also per first role.

    Args:
        markers: the tokenizer's special-token and stop-token patterns (chat_layout.Markers, without a trailer).
        bos_token: the BOS string where the template's BOS is a special token.
    """

    def __init__(self, markers: Markers, bos_token: str | None, kept: KeptLayouts | None = None) -> None:
        self.specials = markers.specials
        self.kept = kept  # skeleton layouts kept across packs (kept.py)
        self.base_markers = markers
        self.bos_token = bos_token
        self.trailers: dict[str, str] = {}  # per tools and kwargs
        self.skeletons: SkeletonCache[Layout | None] = SkeletonCache()
        self.traces: SkeletonCache[tuple[Splicer, Trace] | None] = SkeletonCache()
        self.prefix_texts = PrefixTexts()  # PrefixRenderings' store
        self.heads: dict[str, str | None] = {}  # heads and generic prompts, per tools and kwargs
        self.rules: dict[str, LocalRules | None] = {}  # per tools and kwargs
        self._fixed_prompt: bool | None = None
        self._opener_rule: bool | None = None
        self._history_as_prompted: bool | None = None
        self._windows_hold: dict[bool, bool] = {}  # with tools or without

    def fixed_prompt(self, bind: Bind) -> bool:
        """Whether the template's generation prompt is the same after every conversation prefix of the probes
        (given the tools and kwargs): then an assistant turn's prompt is not rendered per turn."""
        if self._fixed_prompt is None:
            self._fixed_prompt = _prompt_is_fixed(self, bind)
        return self._fixed_prompt

    def history_as_prompted(self, bind: Bind) -> bool:
        """Whether the template shows the conversation before every assistant turn of the probes as that turn's
        generation prompt does: then layouts do not check it per turn (a prefix rendering per turn saved)."""
        if self._history_as_prompted is None:
            self._history_as_prompted = _history_is_prompted(self, bind)
        return self._history_as_prompted

    def opener_rule(self, bind: Bind) -> bool:
        """Whether every message of the probes' skeletons opens with the special token that opens the generation
        prompt (`analyse(rules=...)` then finds message starts without rendering prefixes)."""
        if self._opener_rule is None:
            self._opener_rule = _opener_rule_holds(self, bind)
        return self._opener_rule

    def windows(self, bind: Bind, tools: Any, kwargs: Mapping[str, Any]) -> Windows | None:
        """`Windows` for a template bound to tools and kwargs, where their rule holds on every probe's skeleton (those
        with tools where there are tools, the others where there are none): layouts then render a window per assistant
        turn, not the conversation before it."""
        with_tools = tools is not None
        if with_tools not in self._windows_hold:
            self._windows_hold[with_tools] = _windows_hold(self, bind, with_tools)
        if not self._windows_hold[with_tools]:
            return None
        return self._windows(bind(tools, kwargs), shape_key([], tools, kwargs))

    def _windows(self, render: Render, key: str) -> Windows:
        return Windows(USER, functools.partial(self.window_text, render, key),
                       functools.partial(self.head_end, render, key, USER))

    def window_text(self, render: Render, key: str, messages: list[dict[str, Any]]) -> str:
        """The rendering of a window of a skeleton, its placeholders numbered from 0 while it is rendered and kept
        (in `prefix_texts`): windows of many skeletons are alike but for their numbers (a tool round, a follow-up)."""
        dumped = json.dumps(messages, ensure_ascii=False, default=repr)
        numbers = {int(index): HOLE.format(i) for i, index in enumerate(dict.fromkeys(HOLE_PATTERN.findall(dumped)))}
        canonical = HOLE_PATTERN.sub(lambda match: numbers[int(match.group(1))], dumped)
        stored = hashlib.blake2b(f"{key}|window|{canonical}".encode(), digest_size=16).digest()
        text = self.prefix_texts.get(stored)
        if text is None:
            text = render(filled(messages, numbers), False)
            self.prefix_texts.add(stored, text)
        back = {HOLE.format(i): HOLE.format(index) for i, index in enumerate(numbers)}
        return HOLE_PATTERN.sub(lambda match: back[match.group()], text)

    def local_rules(self, render: Render, key: str) -> LocalRules | None:
        """The template's LocalRules for these tools and kwargs (found once, from probe renderings)."""
        if key not in self.rules:
            prompt = self.generic_prompt(render, key)
            found = self.specials.search(prompt) if prompt and self.specials is not None else None
            self.rules[key] = None if found is None else LocalRules(found.group(), _joins(self, render, key))
        return self.rules[key]

    def markers(self, render: Render, key: str) -> Markers:
        """The markers with the template's trailer for these tools and kwargs: the text every plain rendering ends
        with after its last message. Found once from a two-message and a three-message probe: the end the two share
        that the longer one does not hold after its second message, from after the last stop token there
        (Command-R7B's <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>, Phi-3.5's <|endoftext|>; ChatML's is empty)."""
        if key not in self.trailers:
            if len(self.trailers) >= HEADS_CACHE_SIZE:
                self.trailers.clear()
            self.trailers[key] = _probe_trailer(render, self.base_markers)
        return self.base_markers.with_trailer(self.trailers[key])

    def skeleton_layout(self, bind: Bind, holed: list[dict[str, Any]], tools: Any,
                        kwargs: Mapping[str, Any]) -> Layout | None:
        """The layout of a skeleton (chat_layout.skeleton) with these tools and kwargs, analysed once per shape;
        None where the template refuses the skeleton."""
        return self.skeletons.get(shape_key(holed, tools, kwargs), functools.partial(
            self._skeleton_layout, bind, holed, tools, kwargs))

    def _skeleton_layout(self, bind: Bind, holed: list[dict[str, Any]], tools: Any,
                         kwargs: Mapping[str, Any]) -> Layout | None:
        render, key = bind(tools, kwargs), shape_key([], tools, kwargs)
        return _try_analyse(
            PrefixRenderings(render, holed, key, self.prefix_texts), holed, self.markers(render, key),
            functools.partial(self.head_end, render, key, holed[0]["role"]), self.generic_prompt(render, key),
            self.fixed_prompt(bind), self.local_rules(render, key) if self.opener_rule(bind) else None,
            not self.history_as_prompted(bind), self.windows(bind, tools, kwargs))

    def traced_layout(self, bind: Bind, tracer: Tracer, holed: list[dict[str, Any]],
                      kwargs: Mapping[str, Any]) -> tuple[Splicer, Trace] | None:
        """The layout of a skeleton without tools, ready to splice, and its trace (trace.py), once per shape; None
        where the template refuses the skeleton or reads its placeholders in a way a trace cannot replay."""
        shape = shape_key(holed, None, kwargs)
        return self.traces.get(shape, functools.partial(self._traced_layout, bind, tracer, holed, kwargs, shape))

    def _traced_layout(self, bind: Bind, tracer: Tracer, holed: list[dict[str, Any]],
                       kwargs: Mapping[str, Any], shape: str) -> tuple[Splicer, Trace] | None:
        holed, kwargs = template_data(holed), template_data(dict(kwargs))  # as transformers hands them to a template
        traced = tracer(holed, None, False, dict(kwargs))
        # A layout kept by an earlier pack (kept.py) is this one where the skeleton renders as it did then.
        kept = self.kept.get(shape) if self.kept is not None and traced is not None else None
        if kept is not None and traced is not None and traced.text == kept.text:
            return Splicer(kept), traced
        layout = self.skeleton_layout(bind, holed, None, kwargs)
        # The tracing environment must render the skeleton as the template does: a check on its hooks.
        if layout is None or traced is None or traced.text != layout.text:
            return None
        if self.kept is not None:
            self.kept.add(shape, layout)
        return Splicer(layout), traced

    def head_end(self, render: Render, key: str, first_role: str, text: str) -> int:
        """Where the first message's own span starts: after a BOS and what the template puts before every first
        message (a tools block, a default system message), found once per tools, kwargs and first role."""
        key = f"{key}|{first_role}"
        if key not in self.heads:
            if len(self.heads) >= HEADS_CACHE_SIZE:
                self.heads.clear()
            self.heads[key] = self._probe_head(render, first_role)
        head = self.heads[key]
        if head and text.startswith(head):
            return len(head)
        return len(self.bos_token) if self.bos_token and text.startswith(self.bos_token) else 0

    def generic_prompt(self, render: Render, key: str) -> str | None:
        """The generation prompt after a one-message conversation (for a turn no conversation precedes)."""
        stored = f"{key}|prompt"
        if stored not in self.heads:
            mark = PROBE_MARK
            try:
                plain = render([{"role": USER, "content": mark}], False)
                prompted = render([{"role": USER, "content": mark}], True)
            except Exception:
                plain = prompted = ""
            trailer = self.markers(render, key).trailer  # Command-R7B's prompt is its trailer
            plain = without_trailer(plain, trailer)
            self.heads[stored] = prompted[len(plain):] if prompted.startswith(plain) and prompted != plain else None
        return self.heads[stored]

    def _probe_head(self, render: Render, first_role: str) -> str | None:
        mark = PROBE_MARK
        try:
            probe = render([{"role": first_role, "content": mark}], False)
            plain = render([{"role": USER, "content": mark}], False)
            prompted = render([{"role": USER, "content": mark}], True)
        except Exception:
            return None
        opener = self.specials.search(prompted, len(plain)) if self.specials and prompted.startswith(plain) else None
        at = probe.find(mark)
        head = probe.rfind(opener.group(), 0, at) if opener is not None and at >= 0 else -1
        return probe[:head] if head > 0 else self._shared_head(render, probe)

    def _shared_head(self, render: Render, probe: str) -> str | None:
        """The head where each role opens with a special token of its own (GLM's [gMASK]<sop> before <|user|>,
        <|system|>): what renderings that open with another role share, up to special tokens that differ."""
        if self.specials is None:
            return None
        for role in (SYSTEM, ASSISTANT, USER):
            try:
                other = render([{"role": role, "content": PROBE_MARK}], False)
            except Exception:
                continue
            at = back_off(probe, common_prefix(probe, other), self.specials)
            if at > 0 and at < min(len(probe), len(other)) and self.specials.match(probe, at) \
                    and self.specials.match(other, at):
                return probe[:at]
        return None


# What depends only on the template, by tokenizer fingerprint, chat renderer and template.
_FACTS: dict[tuple[str, str, str], TemplateFacts] = {}


def template_facts(tokenizer: PackTokenizer, markers: Markers, bos_token: str | None) -> TemplateFacts:
    """The TemplateFacts of this tokenizer's template, one per process (`markers` and `bos_token` as they
    follow from the tokenizer: see TemplateFacts)."""
    key = (tokenizer.fingerprint, tokenizer.chat_renderer, json.dumps(tokenizer.chat_template, sort_keys=True))
    if key not in _FACTS:
        _FACTS[key] = TemplateFacts(markers, bos_token, KeptLayouts(
            layouts_key(tokenizer.fingerprint, tokenizer.chat_renderer, tokenizer.chat_template)))
    return _FACTS[key]


def _prompt_is_fixed(facts: TemplateFacts, bind: Bind) -> bool:
    for record in probe_records():
        messages, tools, kwargs = record.chat_messages(), record.tools, record.template_kwargs()
        render = bind(tools, kwargs)
        key = shape_key([], tools, kwargs)
        generic, trailer = facts.generic_prompt(render, key), facts.markers(render, key).trailer
        for k in range(1, len(messages) + 1):
            if k < len(messages) and messages[k]["role"] != ASSISTANT:
                continue
            try:
                plain, prompted = render(messages[:k], False), render(messages[:k], True)
            except Exception:
                continue
            plain = without_trailer(plain, trailer)
            if prompted != plain + (generic or ""):
                return False
    return True


def _history_is_prompted(facts: TemplateFacts, bind: Bind) -> bool:
    # The window probes too: Qwen3 shows a tool loop's reasoning to the turns inside it and drops it from history once
    # a later question follows, which only they hold.
    for record in [*probe_records(), *WINDOW_PROBES]:
        messages, tools, kwargs = record.chat_messages(), record.tools, record.template_kwargs()
        render = bind(tools, kwargs)
        trailer = facts.markers(render, shape_key([], tools, kwargs)).trailer
        try:
            whole = render(messages, False)
        except Exception:
            continue
        for k in range(1, len(messages)):
            if messages[k]["role"] != ASSISTANT:
                continue
            try:
                before = render(messages[:k], False)
            except Exception:
                continue
            before = without_trailer(before, trailer)
            if not whole.startswith(before):
                return False
    return True


def _joins(facts: TemplateFacts, render: Render, key: str) -> dict[tuple[str, str], tuple[str, int]]:
    """LocalRules.joins: for two tool results in a row, the text between their contents and where the second starts
    in it, from the rendering of JOIN_PROBE's prefixes."""
    holed, _ = skeleton(JOIN_PROBE)
    head = functools.partial(facts.head_end, render, key, USER)
    try:
        layout = analyse(render, holed, facts.markers(render, key), head, None, facts.generic_prompt(render, key))
    except Exception:  # a template without tool results
        return {}
    first, second = (HOLE_PATTERN.search(layout.text, layout.starts[i]) for i in (2, 3))
    if first is None or second is None or not first.end() <= layout.starts[3] <= second.start():
        return {}
    return {(TOOL, TOOL): (layout.text[first.end():second.start()], layout.starts[3] - first.end())}


def _opener_rule_holds(facts: TemplateFacts, bind: Bind) -> bool:
    """Whether LocalRules find the message starts that rendering the prefixes finds, on every probe's skeleton."""
    for record in probe_records():
        holed, _ = skeleton(record.chat_messages())
        tools = STAND_IN_TOOLS if record.tools else None
        kwargs = record.template_kwargs()
        render, key = bind(tools, kwargs), shape_key([], tools, kwargs)
        rules = facts.local_rules(render, key)
        if rules is None:
            return False
        head = functools.partial(facts.head_end, render, key, holed[0]["role"])
        prompt = facts.generic_prompt(render, key)
        markers = facts.markers(render, key)
        try:
            rendered = analyse(render, holed, markers, head, None, prompt)
        except Exception:
            continue
        if analyse(render, holed, markers, head, None, prompt, rules=rules).starts != rendered.starts:
            return False
    return True


def _windows_hold(facts: TemplateFacts, bind: Bind, with_tools: bool) -> bool:
    """Whether `Windows`' rule holds for every message of the probes' skeletons (with tools, or without) as the last
    one, and layouts found through windows are those found without; not where no window could be checked (a
    template that refuses every probe with two questions)."""
    checked = False
    for record in [*probe_records(), *WINDOW_PROBES]:
        if (record.tools is not None) != with_tools:
            continue
        holed, _ = skeleton(record.chat_messages())
        kwargs = record.template_kwargs()
        tools = STAND_IN_TOOLS if with_tools else None
        render, key = bind(tools, kwargs), shape_key([], tools, kwargs)
        head = functools.partial(facts.head_end, render, key, holed[0]["role"])
        prompt, markers = facts.generic_prompt(render, key), facts.markers(render, key)
        windows = facts._windows(render, key)
        try:
            whole = analyse(render, holed, markers, head, None, prompt)
        except Exception:
            continue
        for k in range(len(holed)):  # every message last: an assistant turn, and the history before one (R_{k+1})
            if windows.opening(holed, k) <= 0:
                continue
            try:
                last = render(holed[:k + 1], False)
            except Exception:  # refused whole: a window must not lay the turn out instead
                return False
            if windows.as_last(whole.text, whole.starts, holed, k) != last:
                return False
            checked = True
        if analyse(render, holed, markers, head, None, prompt, windows=windows).rewritten != whole.rewritten:
            return False
    return checked


def _try_analyse(render: Render, messages: list[dict[str, Any]], markers: Markers,
                 head: Callable[[str], int], prompt: str | None, fixed_prompt: bool,
                 rules: LocalRules | None = None, history: bool = True,
                 windows: Windows | None = None) -> Layout | None:
    try:
        return analyse(render, messages, markers, head, None, prompt, fixed_prompt, rules, history, windows)
    except Exception:  # the template refuses the skeleton (it inspects contents): analyse the record itself
        return None


# Probe contents that end differently (a common end of two renderings must be template text, not content).
_TRAILER_PROBES = ("\ue002first\ue003a", "\ue002second\ue003b", "\ue002third\ue003c")


def _probe_trailer(render: Render, markers: Markers) -> str:
    """The trailer (TemplateFacts.markers) of a template bound to tools and kwargs; empty where a probe is refused.

    `closing` is what follows the assistant's content when it is last; the part of it that a third message does not
    keep (from after the last stop token the two share) is the trailer, where a one-message rendering ends with it
    too (gpt-oss closes the last turn with <|return|>: no trailer, a closing of its own)."""
    one, two, three = _TRAILER_PROBES
    exchange = [{"role": USER, "content": one}, {"role": ASSISTANT, "content": two}]
    try:
        first, second = render(exchange[:1], False), render(exchange, False)
        longer = render([*exchange, {"role": USER, "content": three}], False)
    except Exception:
        return ""
    after = second.rfind(two) + len(two)
    if after < len(two) or not longer.startswith(second[:after]):
        return ""
    closing = second[after:]
    held = back_off(closing, common_prefix(closing, longer[after:]), markers.specials)
    stops = list(markers.stops.finditer(closing, 0, held)) if markers.stops is not None else []
    if stops:  # the message ends with its stop token and the whitespace after it; the rest opens the next one
        kept = closing[stops[-1].end():held]
        held = stops[-1].end() + len(kept) - len(kept.lstrip())
    trailer = closing[held:]
    return trailer if trailer and first.endswith(trailer) else ""
