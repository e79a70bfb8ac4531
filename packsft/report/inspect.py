"""The seed notebook's view of a chunk: role-delimited sections, what is trained, and the context check.

    ── Chunk 3 (shard 00000, row 3) ─────────────────────
    ✓ starts at BOS : True   trained: 1234/2048 tokens (60.3%)   segments: 2
      │ segment 1 at 0
        <BOS      > ''
        <USR      > 'What is ...'
      ▶ <ASST     > 'It is ...'
"""

from __future__ import annotations

from dataclasses import dataclass

import click
import numpy as np

from packsft.chat_template import ChatRenderer
from packsft.errors import TokenizerError
from packsft.layout import PackedOutput
from packsft.tokenizer import PackTokenizer, load_tokenizer

MAX_CHARS = 90


@dataclass(frozen=True)
class Section:
    role: str  # BOS, USR, ASST, SYS, EOS, PAD or [MID-CONV]
    start: int
    end: int
    text: str
    trained: bool


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
    """Group input tokens into role-delimited sections, as the seed's show_chunk did.

    `mask[i]` is the train flag of the label predicted at input position i.
    """
    names = role_names(tokenizer)
    ids_list = ids.tolist()
    out: list[Section] = []
    i = 0
    while i < len(ids_list):
        role = names.get(ids_list[i], "[MID-CONV]")
        j = i + 1 if role != "[MID-CONV]" else i
        while j < len(ids_list) and ids_list[j] not in names:
            j += 1
        content = ids_list[i + 1 : j] if role != "[MID-CONV]" else ids_list[i:j]
        text = _shorten(tokenizer.hf.decode(content, skip_special_tokens=True), max_chars) if content else ""
        if tokenizer.template == "chat":
            text = text.replace("\n", " ")  # 'user\nWhat is...' -> 'user What is...
        out.append(Section(role, i, j, text, bool(mask[i:j].any())))
        i = j
    return out


def context_check(ids: np.ndarray, mask: np.ndarray, tokenizer: PackTokenizer) -> list[str]:
    """The seed's 'context before first trained label' verdict for one chunk."""
    names = role_names(tokenizer)
    trained = np.flatnonzero(mask)
    if not len(trained):
        return ["no trained tokens"]
    first = int(trained[0])
    context = ids[:first].tolist()
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
    if not has_bos:
        lines.append("     ⚠ no BOS — chunk starts mid-conversation, user question is not in context")
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
    tokenizer = load_tokenizer(override or info["name"], info["template"])
    if tokenizer.fingerprint != info["fingerprint"]:
        raise TokenizerError(
            f"tokenizer {override or info['name']!r} is not the one this output was packed with "
            f"(fingerprint {tokenizer.fingerprint[:12]} != {info['fingerprint'][:12]}); pass --tokenizer with the right one"
        )
    return tokenizer
