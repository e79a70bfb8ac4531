"""`packsft pack --dry-run`: the first records of DATA rendered as the pack would render them, nothing written.

    preview(DATA, config, limit)   the plan's first `limit` records read, rendered, their trained runs marked
    format_preview(preview)        each rendering with its trained text marked, then the counts and the rejects

Records are read in the order the pack reads them (units in plan order, rows in file order), through the same
reader, renderer and reject rules, so what the preview shows and counts is what those records become; only
packing (rows, splits of long conversations) is left out. Nothing is written to OUT_DIR (the tokenizer cache
in ~/.cache/packsft is filled as by any command that loads a tokenizer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packsft.config import PackConfig
from packsft.read.heldout import RecordSplit
from packsft.read.inputs import list_inputs
from packsft.read.reader import read_conversations
from packsft.read.records import ASSISTANT, TEXT, Conversation, RejectLedger
from packsft.render.chat.proof import with_chat_path_proven
from packsft.render.renderers import make_renderer
from packsft.render.tokenizer import load_tokenizer, read_chat_template
from packsft.report.template import Example, add_runs, marked
from packsft.run.pipeline import eval_threshold
from packsft.run.plan import (
    DEFAULT_UNIT_BYTES,
    absolute_listing,
    absolute_tokenizer,
    data_specs,
    loaded_config,
    plan_inputs,
)
from packsft.stages import open_unit
from packsft.stats import counted

DEFAULT_LIMIT = 3
LISTED_REJECTS = 20  # rejected records named one by one


@dataclass
class Preview:
    """The first records of DATA as the pack renders them, and what it would refuse of them."""

    seq_length: int
    records: int = 0  # records read (rejected ones included), at most the limit
    examples: list[Example] = field(default_factory=list)  # one per rendering, its shape naming file:row
    tokens: int = 0
    trained_tokens: int = 0
    longer_than_row: int = 0  # renderings a row cannot hold: split (or truncated, dropped) by --long
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    rejects: list[dict[str, object]] = field(default_factory=list)  # file, row, reason


def preview(data: str | Path | Sequence[str | Path], config: PackConfig, limit: int = DEFAULT_LIMIT) -> Preview:
    """Read the first `limit` records of DATA and render them as `packsft pack` with `config` would."""
    specs = data_specs(data)
    units, _ = plan_inputs(absolute_listing(list_inputs(specs)), config)
    chat_template = read_chat_template(config.chat_template) if config.chat_template else None
    tokenizer = with_chat_path_proven(load_tokenizer(
        absolute_tokenizer(config.tokenizer), config.template, chat_template=chat_template,
        trust_remote_code=config.trust_remote_code, encoder=config.encoder))
    config = loaded_config(config, tokenizer)
    split = RecordSplit(eval_threshold(specs, config, DEFAULT_UNIT_BYTES, False), "train") if config.held_out else None
    rejects, records = RejectLedger(), list[Conversation]()
    for unit in units:
        for part, source in zip(unit.parts, open_unit(unit.parts, config)):
            for read, _ in read_conversations(source, config.format, rejects, source_filter=config.source_filter,
                                               batch_size=1, display_name=part.name, row_groups=part.row_groups,
                                               split=split):
                records += read
                if len(records) + rejects.total >= limit:
                    break
            if len(records) + rejects.total >= limit:
                break
        if len(records) + rejects.total >= limit:
            break
    records = records[: max(limit - rejects.total, 0)]
    result = Preview(config.seq_length, len(records) + rejects.total)
    renderer = make_renderer(tokenizer, config)
    failed: set[int] = set()

    def reject(conversation: Conversation, reason: str) -> None:
        failed.add(id(conversation))
        rejects.reject(conversation.file, conversation.row, reason)

    conversations = renderer.prepare(records)
    batch = renderer.render(conversations, reject=reject)
    rendered = [c for c in conversations if id(c) not in failed]
    dropped = batch.unprompted & (config.unprompted == "drop")
    for index, conversation in enumerate(rendered):
        lo, hi = batch.conv_offsets[index], batch.conv_offsets[index + 1]
        ids, flags = batch.ids[lo:hi], batch.flags[lo:hi]
        if dropped[index]:
            result.rejects.append({"file": conversation.file, "row": conversation.row,
                                   "reason": "dropped by --unprompted drop"})
            continue
        if not flags.any():  # as packsft/stages.py rejects it
            no_assistant = config.mask == "assistant_only" and not {role for role, _ in conversation.messages} & {
                ASSISTANT, TEXT}
            rejects.reject(conversation.file, conversation.row,
                           "no assistant message" if no_assistant else "no trained token")
            continue
        example = Example(f"{conversation.file}:{conversation.row}", tokens=len(ids), trained_tokens=int(flags.sum()))
        add_runs(example, tokenizer, ids, flags)
        result.examples.append(example)
        result.tokens += example.tokens
        result.trained_tokens += example.trained_tokens
        result.longer_than_row += example.tokens > config.seq_length + 1
    result.rejects += [{key: entry[key] for key in ("file", "row", "reason")} for entry in rejects.entries]
    result.rejected.update(str(entry["reason"]) for entry in result.rejects)
    return result


def format_preview(result: Preview, color: bool = False) -> str:
    """Each rendering with its trained text marked (green, or between [[ and ]]), then the counts and rejects."""
    lines = []
    for example in result.examples:
        lines += [f"── {example.shape} ── {example.tokens:,} tokens, {example.trained_tokens:,} trained", marked(example, color)]
    lines += [
        "",
        f"dry run: {counted(result.records, 'record')} read, {counted(len(result.examples), 'rendering')} kept, "
        f"{result.tokens:,} tokens, {result.trained_tokens:,} trained; "
        f"{counted(result.longer_than_row, 'rendering')} longer than a row of {result.seq_length + 1} tokens",
        f"would reject {counted(sum(result.rejected.values()), 'record')}"
        + "".join(f"\n  {count:>6,}  {reason}" for reason, count in result.rejected.most_common()),
        *(f"  {entry['file']}:{entry['row']}: {entry['reason']}" for entry in result.rejects[:LISTED_REJECTS]),
        "nothing was written (drop --dry-run to pack)",
    ]
    return "\n".join(lines)
