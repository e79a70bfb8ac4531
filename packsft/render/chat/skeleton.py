"""Skeletons: a conversation's layout analysed once per shape and moved onto every record of that shape.

A conversation of n messages needs about 1.5 n renderings (layout.py). Most conversations share their shape with
many others, so the analysis runs on a *skeleton*: every content, reasoning, call id and string argument replaced
by a numbered placeholder, cached per shape, tools and template kwargs. Splicing the record's strings into the
skeleton must give back exactly the record's rendering (as given, or JSON-escaped where the template escapes
them), or the record is analysed itself; where the skeleton's trace replays on the record's strings (trace.py), the
splice is that rendering and the record is not rendered at all (`Splicer`).

    skeleton:  <|im_start|>user\\n\ue0000\ue001<|im_end|>\\n<|im_start|>assistant\\n\ue0001\ue001<|im_end|>\\n
    record:    <|im_start|>user\\nHi there<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n
               every position of the layout moves by the lengths of the strings before it (placeholders
               shown as «n»)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from packsft.render.chat.layout import HOLE, HOLE_PATTERN, Layout, Render, common_prefix

# Message fields whose string value is data (never template structure): the skeleton replaces them.
DATA_FIELDS = ("content", "reasoning_content", "reasoning", "thinking", "tool_call_id", "name")
# Skeletons render with this in place of a record's tools (when it has any), so records with different tools share
# a skeleton; the tools block is then the one stretch where a record's rendering differs (see `splice`).
STAND_IN_TOOLS = [{"type": "function", "function": {
    "name": "stand_in", "description": "A stand-in.",
    "parameters": {"type": "object", "properties": {"x": {"type": "string", "description": "x"}}, "required": ["x"]}}}]
SKELETON_CACHE_SIZE = 4096
PREFIX_CACHE_SIZE = 32768  # skeleton renderings (short: contents are placeholders)
# ... and at most this many characters of them: the prefixes of a long agentic trace (hundreds of messages, each prefix
# rendered) held 100 MiB a unit, kept across units, the peak RSS of a 131k-token pack (0.61 GiB; 0.43 GiB bounded).
PREFIX_CACHE_CHARS = 4_000_000
Found = TypeVar("Found")


def skeleton(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages with every non-empty data string replaced by a numbered placeholder, and those strings.

    Empty strings stay empty: templates test them (`{% if content %}`)."""
    values: list[str] = []

    def hole(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        values.append(value)
        return HOLE.format(len(values) - 1)

    out = []
    for message in messages:
        copy = dict(message)
        for key in DATA_FIELDS:
            if key in copy:
                copy[key] = hole(copy[key])
        if isinstance(copy.get("tool_calls"), list):
            copy["tool_calls"] = [_call_skeleton(call, hole) for call in copy["tool_calls"]]
        out.append(copy)
    return out, values


def _call_skeleton(call: Any, hole: Callable[[Any], Any]) -> Any:
    if not isinstance(call, Mapping):
        return call
    copy = dict(call)
    if "id" in copy:
        copy["id"] = hole(copy["id"])
    function = copy.get("function")
    if isinstance(function, Mapping):
        copy["function"] = {key: hole(value) if key in ("name", "arguments") else value for key, value in function.items()}
    return copy


def protect(messages: list[dict[str, Any]], specials: re.Pattern[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages with every special-token string inside their data replaced by a placeholder, and those strings."""
    values: list[str] = []

    def hole(match: re.Match[str]) -> str:
        values.append(match.group())
        return HOLE.format(len(values) - 1)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return specials.sub(hole, value)
        if isinstance(value, Mapping):
            return {key: walk(item) if key != "role" else item for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return [walk(message) for message in messages], values


def shape_key(messages: list[dict[str, Any]], tools: Any, kwargs: Mapping[str, Any]) -> str:
    return json.dumps([messages, tools, kwargs], sort_keys=True, ensure_ascii=False, default=repr)


def splice(layout: Layout, values: list[str], text: str, *, stand_in: bool = False) -> Layout | None:
    """The skeleton's layout moved onto the record whose strings are `values`, if that gives back `text` exactly.

    Args:
        stand_in: the skeleton was rendered with stand-in tools; the one stretch where the spliced skeleton and
            `text` then differ is the tools block, which must hold no position of the layout and no placeholder.
    """
    splicer = Splicer(layout)
    if any(index >= len(values) for index in splicer.indices):
        return None
    strings = [values[index] for index in splicer.indices]
    spliced, lengths = splicer.joined(strings), [len(string) for string in strings]
    if spliced == text:
        return splicer.moved(text, lengths)
    if not stand_in:
        pieces = [piece for literal, string in zip(splicer.literals, strings) for piece in (literal, string)]
        escaped = _escaped_lengths([*pieces, splicer.literals[-1]], text)
        return splicer.moved(text, escaped) if escaped is not None else None
    region = _differing_stretch(spliced, text)
    if region is None:
        return None
    lo, hi, delta = region  # spliced[lo:hi] stands where text[lo:hi + delta] is
    found = splicer.moved(spliced, lengths)
    if any(lo < x < hi for x in _positions(found)) or any(lo < e and s < hi for s, e in found.data):
        return None
    return splicer.moved(text, lengths, past=(hi, delta))


class Splicer:
    """A skeleton's layout, ready to move onto records: its text between placeholders, and which placeholders precede
    each position. Calling it with a record's strings gives the layout of the spliced skeleton: the record's own
    where its rendering is known to be that (a replayed trace: trace.py); `splice` checks it against the rendering."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        marks = [(match.start(), match.end(), int(match.group(1))) for match in HOLE_PATTERN.finditer(layout.text)]
        bounds = [0, *(x for start, end, _ in marks for x in (start, end)), len(layout.text)]
        self.literals = [layout.text[bounds[i]:bounds[i + 1]] for i in range(0, len(bounds), 2)]
        self.indices = [index for _, _, index in marks]
        self.starts = [start for start, _, _ in marks]
        self.widths = [end - start for start, end, _ in marks]
        ends = [end for _, end, _ in marks]
        self.positions = []  # (position, placeholders before it): a position inside a placeholder moves to its start
        for x in _positions(layout):
            j = bisect.bisect_right(ends, x)
            self.positions.append((marks[j][0] if j < len(marks) and marks[j][0] < x else x, j))

    def __call__(self, values: list[str]) -> Layout:
        strings = [values[index] for index in self.indices]
        return self.moved(self.joined(strings), [len(string) for string in strings])

    def joined(self, strings: list[str]) -> str:
        """The skeleton's text with `strings` in its placeholders, in the order they occur."""
        pieces: list[str] = [""] * (2 * len(strings) + 1)
        pieces[::2], pieces[1::2] = self.literals, strings
        return "".join(pieces)

    def moved(self, text: str, lengths: list[int], past: tuple[int, int] | None = None) -> Layout:
        """The layout on `text`, where the placeholders' strings take `lengths` characters (in the order they occur);
        `past` (hi, delta): positions from hi on move by delta more (past a tools block of another length)."""
        layout = self.layout
        shift = [0]
        for length, width in zip(lengths, self.widths):
            shift.append(shift[-1] + length - width)
        xs = [x + shift[j] for x, j in self.positions]
        data = [(start + moved, start + moved + length) for start, moved, length in zip(self.starts, shift, lengths)]
        if past is not None:
            hi, delta = past
            xs = [x + delta if x >= hi else x for x in xs]
            data = [(s + delta, e + delta) if s >= hi else (s, e) for s, e in data]
        at = iter(xs)
        head_end = next(at)
        starts = [next(at) for _ in layout.starts]
        bodies = [next(at) for _ in layout.bodies]
        generated = [None if span is None else (next(at), next(at)) for span in layout.generated]
        return Layout(text, head_end, starts, bodies, generated, list(layout.rewritten), data, list(layout.endings))


def _positions(layout: Layout) -> list[int]:
    """The layout's positions in one list: the head's end, message starts, bodies, generated spans."""
    return [layout.head_end, *layout.starts, *layout.bodies,
            *(x for span in layout.generated if span is not None for x in span)]


def _escaped_lengths(pieces: list[str], text: str) -> list[int] | None:
    """Where the spliced skeleton differs from `text` because the template JSON-escapes some of the record's strings
    (Llama 3 renders a tool result through `tojson`): the length each value has in `text` (as given or escaped),
    walking the skeleton's literal pieces (`pieces`: literal, value, literal, ..., literal); None where that does
    not give back `text`."""
    lengths, at = [], 0
    for i in range(0, len(pieces) - 1, 2):
        literal, value, following = pieces[i], pieces[i + 1], pieces[i + 2]
        if not text.startswith(literal, at):
            return None
        at += len(literal)
        escaped = json.dumps(value, ensure_ascii=False)[1:-1]
        chosen = next((v for v in dict.fromkeys((value, escaped))
                       if text.startswith(v, at) and text.startswith(following[:64], at + len(v))), None)
        if chosen is None:
            return None
        lengths.append(len(chosen))
        at += len(chosen)
    return lengths if text[at:] == pieces[-1] else None


def _differing_stretch(a: str, b: str) -> tuple[int, int, int] | None:
    """(lo, hi, len(b) - len(a)) where a and b agree outside a[lo:hi] and b[lo:hi + delta]; None if not so."""
    lo = common_prefix(a, b)
    if lo == len(a) == len(b):
        return None
    room = min(len(a), len(b)) - lo
    back = common_prefix(a[::-1], b[::-1])
    back = min(back, room)
    return lo, len(a) - back, len(b) - len(a)


class PrefixTexts(dict[bytes, str]):
    """PrefixRenderings' store: renderings by prefix key, cleared when full (PREFIX_CACHE_SIZE entries, or
    PREFIX_CACHE_CHARS characters)."""

    chars = 0

    def add(self, key: bytes, text: str) -> None:
        if len(self) >= PREFIX_CACHE_SIZE or self.chars + len(text) > PREFIX_CACHE_CHARS:
            self.clear()
            self.chars = 0
        self[key] = text
        self.chars += len(text)


class PrefixRenderings:
    """`render` for the prefixes of one skeleton, memoised by the prefix's content in `store` (shared by every
    skeleton of a unit): skeletons of agentic traces rarely repeat whole, but their early turns do.

    Call it as `render` is called, with `messages[:i]` of the messages it was made for.
    """

    def __init__(self, render: Render, messages: list[dict[str, Any]], context: str, store: PrefixTexts) -> None:
        self.render, self.messages, self.store = render, messages, store
        digest = hashlib.blake2b(context.encode(), digest_size=16)
        self.keys = [digest.digest()]
        for message in messages:
            digest.update(json.dumps(message, sort_keys=True, ensure_ascii=False, default=repr).encode())
            self.keys.append(digest.digest())

    def __call__(self, messages: list[dict[str, Any]], prompt: bool) -> str:
        key = self.keys[len(messages)] + (b"+" if prompt else b"-")
        text = self.store.get(key)
        if text is None:
            text = self.render(messages, prompt)
            self.store.add(key, text)
        return text


@dataclass
class SkeletonCache(Generic[Found]):
    """Layouts of skeletons (or what else is found once per shape) by shape key, bounded (cleared when full: shapes
    repeat within a unit, not across)."""

    entries: dict[str, Found] = field(default_factory=dict)

    def get(self, key: str, compute: Callable[[], Found]) -> Found:
        if key not in self.entries:
            if len(self.entries) >= SKELETON_CACHE_SIZE:
                self.entries.clear()
            self.entries[key] = compute()
        return self.entries[key]
