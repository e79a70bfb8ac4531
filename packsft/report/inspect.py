"""The seed notebook's view of a chunk: role-delimited sections, what is trained, and the context check.

    ── Chunk 3 (shard 00000, row 3) ─────────────────────
    ✓ starts at BOS : True   trained: 1234/2048 tokens (60.3%)   segments: 2
      │ segment 1 at 0
        <BOS      > ''
        <USR      > 'What is ...'
      ▶ <ASST     > 'It is ...'
      ▶ <USR      > ''
            └ tool result '{"temp": 21}'
      ▶ <ASST     > ''
      ▶     ├ reasoning   'Read the tool result.'
      ▶     └ text        'It is 21 C.'

Agentic turns are split into parts of a kind (reasoning, tool call, tool result, tool definitions), found by
their markers in the decoded text (`<think>`…`</think>` and so on), so the view is the same whether the
tokenizer has a token for a marker (Qwen3) or writes it as plain text (`--template roles`). A section's ▶
means a label predicted from it is trained (as the seed notebook showed it); a part's ▶ means its own tokens are
trained labels, so context (tool results, definitions) never shows one. A section without markers prints
exactly as before.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import click
import numpy as np

from packsft.errors import TokenizerError
from packsft.render.chat import ChatRenderer
from packsft.render.tokenizer import PackTokenizer, load_output_tokenizer
from packsft.write.layout import PackedOutput

MAX_CHARS = 90
MID_CONV = "[MID-CONV]"

# The kinds of text inside a turn, by their (open, close) markers, as Hermes-style templates (Qwen3) and the
# roles template write them.
KIND_MARKERS = {
    "reasoning": ("<think>", "</think>"),
    "tool call": ("<tool_call>", "</tool_call>"),
    "tool result": ("<tool_response>", "</tool_response>"),
    "tool defs": ("<tools>", "</tools>"),
}
TEXT_KIND = "text"  # a turn's own text between parts
# The kinds each turn can hold. Qwen3's system prompt *describes* a call ("... within <tool_call></tool_call>
# XML tags:\n<tool_call>\n{...}\n</tool_call>"), which is not one; a turn of unknown role may hold any.
KINDS_OF_ROLE = {
    "system": ("tool defs",), "user": ("tool result",), "tool": ("tool result",),
    "assistant": ("reasoning", "tool call"),
}
ROLE_OF_NAME = {"SYS": "system", "USR": "user", "ASST": "assistant"}


@dataclass(frozen=True)
class Part:
    kind: str  # a key of KIND_MARKERS, or TEXT_KIND
    start: int
    end: int
    text: str  # without its markers
    trained: bool  # some token of the part is a trained label


@dataclass(frozen=True)
class Section:
    role: str  # BOS, USR, ASST, SYS, EOS, PAD or [MID-CONV]
    start: int
    end: int
    text: str  # the text before the first part when there are parts
    trained: bool
    parts: tuple[Part, ...] = ()


def role_names(tokenizer: PackTokenizer) -> dict[int, str]:
    if tokenizer.template == "chat":
        # Chat templates have no role tokens: sections start at the template's special tokens, named
        # by their text (`<|im_start|>` -> `im_start`); the role name follows in the section text.
        hf = tokenizer.hf
        special = {i for i, t in hf.added_tokens_decoder.items() if t.special} | set(hf.all_special_ids)
        return {i: hf.convert_ids_to_tokens(i).strip("<|>") for i in sorted(special)}
    names = {tokenizer.eos_id: "EOS", tokenizer.pad_id: "PAD"}
    if tokenizer.bos_id is not None:
        names[tokenizer.bos_id] = "BOS"
    short = {"user": "USR", "assistant": "ASST", "system": "SYS"}
    names.update({token_id: short[role] for role, token_id in tokenizer.role_ids.items()})
    return names


def _shorten(text: str, max_chars: int) -> str:
    text = text.strip()
    return text[:max_chars] + ("..." if len(text) > max_chars else "")


def sections(ids: np.ndarray, mask: np.ndarray, tokenizer: PackTokenizer, max_chars: int = MAX_CHARS) -> list[Section]:
    """Group input tokens into role-delimited sections, as the seed notebook's show_chunk did, with their kind parts.

    `mask[i]` is the train flag of the label predicted at input position i.
    """
    names = role_names(tokenizer)
    chat = tokenizer.template == "chat"
    ids_list = ids.tolist()
    out: list[Section] = []
    i = 0
    while i < len(ids_list):
        role = names.get(ids_list[i], MID_CONV)
        j = i + 1 if role != MID_CONV else i
        while j < len(ids_list) and ids_list[j] not in names:
            j += 1
        first = i + 1 if role != MID_CONV else i
        full = tokenizer.hf.decode(ids_list[first:j], skip_special_tokens=True) if first < j else ""
        bounds = _part_bounds(ids_list, first, j, role, full, tokenizer) if _has_marker(full) else []
        parts: list[Part] = []
        for kind, start, end in bounds:
            text = _part_text(tokenizer.hf.decode(ids_list[start:end], skip_special_tokens=True), kind)
            if kind == TEXT_KIND and not text:
                continue  # the newlines between two parts
            text = _shorten(text, max_chars)
            parts.append(Part(kind, start, end, text.replace("\n", " ") if chat else text,
                              bool(mask[max(start - 1, 0) : end - 1].any())))
        if bounds:
            head = ids_list[first : bounds[0][1]]
            full = tokenizer.hf.decode(head, skip_special_tokens=True) if head else ""
        text = _shorten(full, max_chars) if full else ""
        if chat:
            text = text.replace("\n", " ")  # 'user\nWhat is...' -> 'user What is...
        out.append(Section(role, i, j, text, bool(mask[i:j].any()), tuple(parts)))
        i = j
    return out


def token_kinds(ids: np.ndarray, tokenizer: PackTokenizer) -> dict[int, str]:
    """The kind (a key of KIND_MARKERS) of each position that lies in a reasoning, tool call, result or definitions."""
    found = sections(ids, np.zeros(len(ids), np.uint8), tokenizer)
    return {pos: part.kind for section in found for part in section.parts if part.kind != TEXT_KIND
            for pos in range(part.start, part.end)}


def _has_marker(text: str) -> bool:
    return any(marker in text for pair in KIND_MARKERS.values() for marker in pair)


def _part_bounds(ids: list[int], first: int, end: int, role: str, full: str,
                 tokenizer: PackTokenizer) -> list[tuple[str, int, int]]:
    """(kind, start, end) token ranges that cover a section's content from its first part on; [] if it has none.

    Markers are found in the tokens' texts joined (one decode per token), so a character maps back to the
    token that holds it; a marker that shares a token with its neighbour takes the whole token.
    """
    if role in ROLE_OF_NAME:
        kinds = KINDS_OF_ROLE[ROLE_OF_NAME[role]]
    elif role == MID_CONV:
        kinds = tuple(KIND_MARKERS)
    else:  # a chat turn names its role on its first line ('assistant\n...')
        kinds = KINDS_OF_ROLE.get(full.split("\n", 1)[0].strip(), tuple(KIND_MARKERS))
    pieces = tokenizer.hf.batch_decode([[t] for t in ids[first:end]], skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False)
    ends = np.cumsum([len(piece) for piece in pieces]).tolist()
    spans = _kind_spans("".join(pieces), kinds, role == MID_CONV)
    bounds: list[tuple[str, int, int]] = []
    at: int | None = None  # where the previous part ended
    for kind, lo, hi in spans:
        start = first + bisect_right(ends, lo)
        if at is not None:
            start = max(start, at)
            if start > at:
                bounds.append((TEXT_KIND, at, start))
        stop = max(first + bisect_right(ends, hi - 1) + 1, start)
        if stop > start:
            bounds.append((kind, start, stop))
        at = stop
    if at is not None and at < end:
        bounds.append((TEXT_KIND, at, end))
    return bounds


def _kind_spans(text: str, kinds: Sequence[str], mid_conversation: bool) -> list[tuple[str, int, int]]:
    """(kind, start, end) character spans of the parts in `text`, in order.

    A part opens with its marker at the start of a line (a template writes them so; prose that mentions
    `<tools></tools>` does not) and closes at its close marker, or at the end of the text when the chunk
    cuts it. A chunk that starts mid-conversation may start inside a part: its text up to a close marker
    that starts a line before any open one is that part.
    """
    spans: list[tuple[str, int, int]] = []
    pos = 0
    while True:
        opens = [(at, kind) for kind in kinds if (at := _line_start_find(text, KIND_MARKERS[kind][0], pos)) >= 0]
        if mid_conversation and not spans:
            closes = [(at, kind) for kind in kinds if (at := _line_start_find(text, KIND_MARKERS[kind][1], 0)) >= 0]
            if closes and (not opens or min(closes)[0] < min(opens)[0]):
                at, kind = min(closes)
                pos = at + len(KIND_MARKERS[kind][1])
                spans.append((kind, 0, pos))
                continue
        if not opens:
            return spans
        at, kind = min(opens)
        opener, closer = KIND_MARKERS[kind]
        close = text.find(closer, at + len(opener))
        pos = len(text) if close < 0 else close + len(closer)
        spans.append((kind, at, pos))


def _line_start_find(text: str, marker: str, pos: int) -> int:
    at = text.find(marker, pos)
    while at > 0 and text[at - 1] != "\n":
        at = text.find(marker, at + 1)
    return at


def _part_text(text: str, kind: str) -> str:
    """A part's text without its markers and the whitespace around them."""
    text = text.strip()
    if kind in KIND_MARKERS:
        opener, closer = KIND_MARKERS[kind]
        text = text.removeprefix(opener).removesuffix(closer).strip()
    return text


def context_check(ids: np.ndarray, mask: np.ndarray, tokenizer: PackTokenizer) -> list[str]:
    """The seed notebook's 'context before first trained label' verdict for one chunk."""
    names = role_names(tokenizer)
    trained = np.flatnonzero(mask)
    if not len(trained):
        return ["no trained tokens"]
    first = int(trained[0])
    # mask[first] trains the label ids[first + 1], predicted from ids[:first + 1]: that is its context.
    context = ids[:first + 1].tolist()
    user_id = tokenizer.role_ids.get("user")
    has_bos = tokenizer.bos_id in context
    has_user = user_id in context
    if tokenizer.template == "chat":
        # No role tokens: look for the template's user header; a template without BOS passes that check
        # when the chunk starts at a conversation start (its first section is a special token).
        header = _chat_user_header(tokenizer)
        has_user = bool(header) and header in tokenizer.hf.decode(context, skip_special_tokens=False)
        has_bos = tokenizer.bos_id in context if tokenizer.bos_id is not None else int(ids[0]) in names
    text = tokenizer.hf.decode([t for t in context if t not in names], skip_special_tokens=True).strip()[:80]
    first_label = tokenizer.hf.decode([int(ids[first + 1]) if first + 1 < len(ids) else int(ids[first])])
    lines = [
        f"{'✓' if has_bos and has_user else '✗'} context before first trained label:",
        f"     role tokens seen : {[names[t] for t in context if t in names]}",
        f"     user context     : {text!r}",
        f"     first prediction : {first_label!r}",
    ]
    user_first = user_id is not None and first + 1 < len(ids) and int(ids[first + 1]) == user_id
    if not has_bos:
        lines.append("     ⚠ no BOS — chunk starts mid-conversation, user question is not in context")
    elif not has_user and user_first:
        lines[0] = "✓" + lines[0][1:]
        lines.append("     ✓ the first trained label opens the user turn (--mask all trains every token)")
    elif not has_user:
        lines.append("     ⚠ no USR  — assistant response has no preceding user turn in context")
    else:
        lines.append("     ✓ full user turn visible before first trained token")
    return lines


def _paint(line: str, trained: bool, color: bool) -> str:
    """Trained lines green, masked ones dim; the text itself is unchanged (colour off = plain text)."""
    if not color:
        return line
    return click.style(line, fg="green") if trained else click.style(line, dim=True)


def _chat_user_header(tokenizer: PackTokenizer) -> str:
    """The text a chat template puts before a (second) user message, after the previous turn's end."""

    pieces = ChatRenderer(tokenizer).literals(("user", "user"))
    if not pieces:
        return ""
    between = pieces[1]
    # Drop the previous turn's end: everything up to and including the first special token.
    found = [(between.find(t), t) for t in tokenizer.hf.all_special_tokens if t and t in between]
    if found:
        at, token = min(found)
        between = between[at + len(token) :]
    return between.lstrip("\n")


def render_chunk(output: PackedOutput, index: int, tokenizer: PackTokenizer, *, tokens: bool = False,
                 max_chars: int = MAX_CHARS, color: bool = False) -> str:
    """The text `packsft inspect --chunk N` prints; `color` adds ANSI colours for a terminal."""
    row = output.row(index)
    shard, local = output.locate(index)
    ids = row.tokens[:-1]
    labels = row.tokens[1:]
    mask = row.loss_mask
    L = len(mask)
    n_trained = int(mask.sum())
    starts_bos = tokenizer.bos_id is not None and int(ids[0]) == tokenizer.bos_id
    if tokenizer.bos_id is None:  # chat templates without BOS: a piece starts at a special token instead
        starts_bos = int(ids[0]) in role_names(tokenizer)
    starts = set(row.segment_starts.tolist())
    lines = [
        f"── Chunk {index} (shard {output.shards[shard]}, row {local}) {'─' * 30}",
        f"{'✓' if starts_bos else '✗'} starts at BOS : {starts_bos if tokenizer.bos_id is not None else 'n/a (no BOS)'}   trained: {n_trained}/{L} tokens "
        f"({100 * n_trained / L:.1f}%)   segments: {len(row.segment_lengths)}   "
        f"padding: {L + 1 - int(row.segment_lengths.sum())}",
    ]
    segment = 0
    for section in sections(ids, mask, tokenizer, max_chars):
        for start in sorted(s for s in starts if section.start <= s < section.end):
            segment += 1
            line = f"  │ segment {segment} at {start}"
            lines.append(click.style(line, fg="cyan") if color else line)
        marker = "  ▶" if section.trained else "   "
        lines.append(_paint(f"{marker} <{section.role:<9}> {section.text!r}", section.trained, color))
        for k, part in enumerate(section.parts):
            branch = "└" if k == len(section.parts) - 1 else "├"
            line = f"{'  ▶' if part.trained else '   '}     {branch} {part.kind:<11} {part.text!r}"
            lines.append(_paint(line, part.trained, color))
    lines.append("")
    lines.extend(context_check(ids, mask, tokenizer))
    if tokens:
        lines.append("")
        lines.append(f"{'pos':>5} {'input':>7} {'label':>7} {'train':>5}  text")
        for i in range(L):
            piece = tokenizer.hf.decode([int(labels[i])])
            line = f"{i:>5} {int(ids[i]):>7} {int(labels[i]):>7} {int(mask[i]):>5}  {piece!r}"
            lines.append(_paint(line, bool(mask[i]), color))
    return "\n".join(lines)


def tokenizer_for(output: PackedOutput, override: str | None = None) -> PackTokenizer:
    """Load the tokenizer an output was packed with (or `override`), refusing a different one."""

    info = output.dataset["tokenizer"]
    tokenizer = load_output_tokenizer(info, override)
    if tokenizer.fingerprint != info["fingerprint"]:
        raise TokenizerError(
            f"tokenizer {override or info['name']!r} is not the one this output was packed with "
            f"(fingerprint {tokenizer.fingerprint[:12]} != {info['fingerprint'][:12]}); pass --tokenizer with the right one"
        )
    return tokenizer
