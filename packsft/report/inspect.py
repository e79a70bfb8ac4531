"""A chunk as the seed notebook showed it: role-delimited sections, what is trained, and the context check.

    ── Chunk 3 (shard 00000, row 3) ─────────────────────
    ✓ starts at BOS : True   trained: 1234/2048 tokens (60.3%)   segments: 2   padding: 0
      │ segment 1 at 0
        <BOS      > ''
        <USR      > 'What is ...'
      ▶ <ASST     > 'It is ...'
        <USR      > ''
            └ tool result '{"temp": 21}'
      ▶ <ASST     > ''
      ▶     ├ reasoning   'Read the tool result.'
      ▶     └ text        'It is 21 C.'
      ▶ <EOS      > ''

A ▶ marks a line some of whose own tokens are trained labels (the token at position i+1 is trained where
loss_mask[i] is 1), so a prompt never shows one and the end of an assistant turn does. Sections start at the
template's control tokens, named by the part they play (markers.py): role tokens, BOS, EOS and PAD for the
roles template; for a chat template a turn's header (`<|im_start|>user\n`) names its role, and `end of turn`
and `stop` name the tokens that close turns. The padding after the last segment is one line.

Agentic turns are split into parts of a kind (reasoning, tool call, tool result, tool definitions), found by
their markers in the decoded text (`<think>`…`</think>` and so on), so the view is the same whether the
tokenizer has a token for a marker (Qwen3) or writes it as plain text (`--template roles`). A section without
markers prints one line.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import click
import numpy as np

from packsft.errors import TokenizerError
from packsft.render.tokenizer import PackTokenizer, load_output_tokenizer
from packsft.report.markers import PAD, TemplateMarkers, template_markers
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
    role: str  # a marker name (markers.py: BOS, USR, user, end of turn, PAD, ...) or [MID-CONV]
    start: int
    end: int
    text: str  # the text before the first part when there are parts
    trained: bool  # some token of the section is a trained label
    parts: tuple[Part, ...] = ()
    body: int = 0  # where its text starts, after its control token or turn header


def trained_tokens(loss_mask: np.ndarray) -> np.ndarray:
    """Whether each of a row's L+1 tokens is a trained label: loss_mask[i] trains token i+1, token 0 is none."""
    return np.concatenate([[False], np.asarray(loss_mask, dtype=bool)])


def _shorten(text: str, max_chars: int) -> str:
    text = text.strip()
    return text[:max_chars] + ("..." if len(text) > max_chars else "")


def sections(ids: np.ndarray, trained: np.ndarray, tokenizer: PackTokenizer, max_chars: int = MAX_CHARS, *,
             pad_from: int | None = None, markers: TemplateMarkers | None = None) -> list[Section]:
    """Group a row's tokens into sections that start at its control tokens, with their kind parts.

    Args:
        trained: whether each token is a trained label (`trained_tokens`), as long as `ids`.
        pad_from: where the row's padding starts: the padding is one PAD section. None: `ids` has none.
        markers: `template_markers(tokenizer)`, when the caller has it already.
    """
    markers = markers or template_markers(tokenizer)
    names = markers.names
    chat = tokenizer.template == "chat"
    ids_list = ids.tolist()
    stop = len(ids_list) if pad_from is None else min(pad_from, len(ids_list))
    out: list[Section] = []
    i = 0
    while i < stop:
        header = markers.header_at(ids_list, i)
        if header is not None:
            role, first = header[0], min(i + header[1], stop)
        elif ids_list[i] in names:
            role, first = names[ids_list[i]], i + 1
        else:
            role, first = MID_CONV, i
        j = first
        while j < stop and ids_list[j] not in names:
            j += 1
        full = tokenizer.hf.decode(ids_list[first:j], skip_special_tokens=True) if first < j else ""
        bounds = _part_bounds(ids_list, first, j, role, full, tokenizer) if _has_marker(full) else []
        parts: list[Part] = []
        for kind, start, end in bounds:
            text = _part_text(tokenizer.hf.decode(ids_list[start:end], skip_special_tokens=True), kind)
            if kind == TEXT_KIND and not text:
                continue  # the newlines between two parts
            text = _shorten(text, max_chars)
            parts.append(Part(kind, start, end, text.replace("\n", " ") if chat else text,
                              bool(trained[start:end].any())))
        if bounds:
            head = ids_list[first : bounds[0][1]]
            full = tokenizer.hf.decode(head, skip_special_tokens=True) if head else ""
        text = _shorten(full, max_chars) if full else ""
        if chat:
            text = text.replace("\n", " ")  # 'What is\nthis?' -> 'What is this?'
        out.append(Section(role, i, j, text, bool(trained[i:j].any()), tuple(parts), first))
        i = j
    if stop < len(ids_list):
        out.append(Section(PAD, stop, len(ids_list), "", bool(trained[stop:].any()), (), stop))
    return out


def token_kinds(found: list[Section]) -> dict[int, str]:
    """The kind (a key of KIND_MARKERS) of each position that lies in a reasoning, tool call, result or definitions."""
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
    if ROLE_OF_NAME.get(role, role) in KINDS_OF_ROLE:  # a role token, or a chat turn's header
        kinds = KINDS_OF_ROLE[ROLE_OF_NAME.get(role, role)]
    elif role == MID_CONV:
        kinds = tuple(KIND_MARKERS)
    else:  # a chat turn whose header was not recognised may name its role on its first line ('assistant\n...')
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


def context_check(ids: np.ndarray, trained: np.ndarray, found: list[Section], tokenizer: PackTokenizer) -> list[str]:
    """The seed notebook's 'context before first trained label' verdict for one row.

    Args:
        ids, trained: the row's tokens and their train flags (`trained_tokens`).
        found: the row's `sections`.
    """
    positions = np.flatnonzero(trained)
    if not len(positions):
        return ["no trained tokens"]
    first = int(positions[0])  # the first trained token; ids[:first] is what predicts it
    before = [s for s in found if s.start < first]
    user_id = tokenizer.role_ids.get("user")
    if tokenizer.bos_id is not None:
        has_bos = tokenizer.bos_id in ids[:first].tolist()
    else:  # a chat template without BOS: a row that starts at a turn's header has the turn's start
        has_bos = bool(found) and found[0].body > found[0].start + 1
    has_user = any(s.role in ("USR", "user") for s in before)
    content = [t for s in before for t in ids[s.body : min(s.end, first)].tolist()]
    text = tokenizer.hf.decode(content, skip_special_tokens=True).strip()[:80]
    lines = [
        f"{'✓' if has_bos and has_user else '✗'} context before first trained label:",
        f"     role tokens seen : {[s.role for s in before if s.role != MID_CONV]}",
        f"     user context     : {text!r}",
        f"     first prediction : {tokenizer.hf.decode([int(ids[first])])!r}",
    ]
    if not has_bos:
        where = "BOS" if tokenizer.bos_id is not None else "turn header"
        lines.append(f"     ⚠ no {where} — chunk starts mid-conversation, user question is not in context")
    elif not has_user and user_id is not None and int(ids[first]) == user_id:
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


def start_check(ids: np.ndarray, tokenizer: PackTokenizer) -> str:
    """The row's first check: does it start at BOS; a template without BOS says so instead of a verdict."""
    if tokenizer.bos_id is None:
        return f"  no BOS ({tokenizer.template} template)"
    starts = int(ids[0]) == tokenizer.bos_id
    return f"{'✓' if starts else '✗'} starts at BOS : {starts}"


def render_chunk(output: PackedOutput, index: int, tokenizer: PackTokenizer, *, tokens: bool = False,
                 max_chars: int = MAX_CHARS, color: bool = False) -> str:
    """The text `packsft inspect --chunk N` prints; `color` adds ANSI colours for a terminal."""
    row = output.row(index)
    shard, local = output.locate(index)
    ids = row.tokens
    labels = row.tokens[1:]
    mask = row.loss_mask
    L = len(mask)
    n_trained = int(mask.sum())
    nonpad = int(row.segment_lengths.sum())
    trained = trained_tokens(mask)
    found = sections(ids, trained, tokenizer, max_chars, pad_from=nonpad)
    starts = set(row.segment_starts.tolist())
    width = max([9] + [len(s.role) for s in found])
    lines = [
        f"── Chunk {index} (shard {output.shards[shard]}, row {local}) {'─' * 30}",
        f"{start_check(ids, tokenizer)}   trained: {n_trained}/{L} tokens ({100 * n_trained / L:.1f}%)   "
        f"segments: {len(row.segment_lengths)}   padding: {L + 1 - nonpad}",
    ]
    segment = 0
    for section in found:
        for start in sorted(s for s in starts if section.start <= s < section.end):
            segment += 1
            line = f"  │ segment {segment} at {start}"
            lines.append(click.style(line, fg="cyan") if color else line)
        marker = "  ▶" if section.trained else "   "
        shown = f"× {section.end - section.start}" if section.start == nonpad else repr(section.text)
        if section.trained and section.text and not trained[section.body : section.end].any():
            # The roles template trains the role token that ends an assistant's turn, not the text after it.
            what = "token" if section.body == section.start + 1 else "header"
            shown += f"   (only the {section.role} {what} is trained)"
        lines.append(_paint(f"{marker} <{section.role:<{width}}> {shown}", section.trained, color))
        for k, part in enumerate(section.parts):
            branch = "└" if k == len(section.parts) - 1 else "├"
            line = f"{'  ▶' if part.trained else '   '}     {branch} {part.kind:<11} {part.text!r}"
            lines.append(_paint(line, part.trained, color))
    lines.append("")
    lines.extend(context_check(ids, trained, found, tokenizer))
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
    try:
        tokenizer = load_output_tokenizer(info, override)
    except TokenizerError as exc:
        if override:
            raise
        raise TokenizerError(f"{exc}. {output.out_dir} was packed with tokenizer {info['name']!r}: pass --tokenizer "
                             "PATH to load it from where it is now (the same tokenizer files)") from None
    if tokenizer.fingerprint != info["fingerprint"]:
        raise TokenizerError(
            f"tokenizer {override or info['name']!r} is not the one this output was packed with "
            f"(fingerprint {tokenizer.fingerprint[:12]} != {info['fingerprint'][:12]}); pass --tokenizer with the right one"
        )
    return tokenizer
