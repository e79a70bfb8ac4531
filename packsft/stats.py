"""Counters a pack run collects per unit, their sums, and the derived figures `packsft stats` prints.

Every counter is an integer (or a histogram, or integers by name) that adds across units, so merge only sums.
The counters come in groups, one dataclass per stage; a manifest stores them flat (`UnitCounters.to_dict`):

    UnitCounters   read      ReadCounts     what reading kept and refused     (absent: no record batch read)
                   chat      ChatTurns      what a chat template did to turns (absent: role tokens)
                   rendered  RenderCounts   the rendered conversations
                   packed    PackCounts     what packing placed, per source
                   rejects   Rejects        the reject ledger
                   split     SplitTotals    what splitting did                (absent: --strategy linear)
                   context   LabelContext   which labels keep their context
                   rows      RowCounts      what the rows hold

None means never counted: a group or field that does not apply to a unit is left out of its manifest, and
None + n = n when units are summed. Fields counted only by later versions default to None too, so that
manifests of earlier versions sum (and verify) as they did.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

# Histogram of rendered conversation lengths: bins of this many tokens, the last bin open-ended.
LENGTH_BIN = 256
LENGTH_BINS = 64

UNPROMPTED_WARN_SHARE = 0.01
# The per-source key of conversations without a source (stages.py's; records read from a file are named by it).
NO_SOURCE = "(none)"
MAX_SOURCES_SHOWN = 20  # per-source rows in the text summary; --json has them all
SOURCE_WIDTH = 48  # the longest source name the text summary shows whole (a file's path, often)

C = TypeVar("C", bound="Counts")


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(kind: type) -> tuple[str, ...]:
    """A counter group's field names, read once per class (a split adds a group per long conversation)."""
    if kind not in _NAMES:
        _NAMES[kind] = tuple(f.name for f in fields(kind))
    return _NAMES[kind]


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict):
        return {key: _add(a.get(key), b.get(key)) for key in a | b}
    return a + b


def _check_known(flat: Mapping[str, Any], names: Iterable[str]) -> None:
    """Counters no version of packsft writes (an edited or damaged manifest) are an error, not dropped."""
    unknown = sorted(flat.keys() - set(names))
    if unknown:
        raise ValueError(f"unknown counters: {', '.join(unknown)}")


def _plain(value: Any) -> Any:
    """`value` as JSON holds it."""
    if isinstance(value, Counts):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Histogram):
        return list(value)
    return value


class Histogram(tuple[int, ...]):
    """Counts per bin; adds bin by bin (a plain tuple would concatenate)."""

    def __add__(self, other: tuple[int, ...]) -> Histogram:  # type: ignore[override]
        return Histogram(a + b for a, b in itertools.zip_longest(self, other, fillvalue=0))


@dataclass
class Counts:
    """A group of counters that adds field by field; a field that is None was never counted."""

    def __add__(self: C, other: C) -> C:
        return type(self)(**{name: _add(getattr(self, name), getattr(other, name)) for name in _names(type(self))})

    @classmethod
    def of(cls: type[C], source: object) -> C:
        """The group read from `source` by its own field names (e.g. from pack/split.py's SplitCounts)."""
        return cls(**{name: getattr(source, name) for name in _names(cls)})

    @classmethod
    def from_dict(cls: type[C], flat: Mapping[str, Any]) -> C:
        """The group from its counters as stored; a missing one takes its default."""
        _check_known(flat, _names(cls))
        return cls(**flat)

    def to_dict(self) -> dict[str, Any]:
        return {name: _plain(value) for name in _names(type(self)) if (value := getattr(self, name)) is not None}


@dataclass
class ReadCounts(Counts):
    """What reading saw, and what it or rendering refused or left out (read/, render/)."""

    conversations_read: int = 0
    records_filtered: int = 0  # records --source-filter left out
    conversations_dropped_no_trained: int = 0  # rejected: no trained token
    conversations_rejected_rendering: int | None = None  # refused by the chat template (only where it happened)
    assistant_turns_untrained: int | None = None  # kept as context by the records or --turns (only where any)
    # Records of the held-out split's other side (read/heldout.py): in a training output the eval records, in the
    # eval output the training records (only in outputs with a split).
    records_other_split: int | None = None
    # Per --mix source (read/mix.py), by its path inside DATA (only in mixed outputs).
    mix_sources: dict[str, MixCounts] | None = None

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> ReadCounts:
        mixed = flat.get("mix_sources")
        counts = super().from_dict(flat)
        if mixed is None:
            return counts
        return replace(counts, mix_sources={name: MixCounts.from_dict(m) for name, m in mixed.items()})


@dataclass
class MixCounts(Counts):
    """What --mix made of one source: records read and kept, renderings repeated, tokens in the output."""

    records_read: int = 0  # read from the source's files (before validation; the held-out split's other side not)
    records_kept: int = 0  # ... given at least one copy (the others are left out by a rate under 1)
    repeats: int = 0  # renderings added as further copies of kept ones
    tokens_kept: int = 0  # rendered tokens in the output, copies included


@dataclass
class ChatTurns(Counts):
    """What a chat template does to trained turns, and the renderings --turns inference adds (render/chat/renderer.py)."""

    turns_rewritten_in_history: int = 0
    reasoning_tokens_dropped: int = 0
    # Trained turns the template renders no stop token after: EOS appended and trained (GLM's last turn), or ended by
    # a template token the model does not stop on (gpt-oss's <|end|> in history), trained as the turn's end.
    stop_tokens_appended: int = 0
    turns_ended_without_stop_token: int = 0
    inference_renderings_added: int = 0
    inference_context_tokens: int = 0


CHAT_TURN_COUNTERS = _names(ChatTurns)


@dataclass
class RenderCounts(Counts):
    """The rendered conversations, after --unprompted drop."""

    tokens_rendered: int = 0
    special_strings_in_content: int | None = None  # messages holding special-token strings (None: earlier versions)
    conversations_dropped_unprompted: int = 0
    trainable_tokens_available: int = 0
    trained_unprompted: int = 0  # trained labels of turns no user message prompts
    length_histogram: Histogram = Histogram()  # conversations by rendered length, bins of LENGTH_BIN tokens

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> RenderCounts:
        return replace(super().from_dict(flat), length_histogram=Histogram(flat.get("length_histogram", ())))


@dataclass
class SourceCounts(Counts):
    """One source's conversations and what packing kept of them."""

    conversations: int = 0
    trainable: int = 0  # trainable labels
    kept: int = 0  # trained labels kept
    tokens: int = 0  # rendered tokens
    pad_share: int = 0  # its share of row padding (by tokens in the row)
    truncated: int = 0
    dropped: int = 0


@dataclass
class PackCounts(Counts):
    """What packing placed: conversations and pieces, and per source what it kept."""

    conversations_packed: int = 0
    pieces: int = 0
    per_source: dict[str, SourceCounts] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> PackCounts:
        per_source = {name: SourceCounts.from_dict(s) for name, s in flat.get("per_source", {}).items()}
        return replace(super().from_dict(flat), per_source=per_source)


@dataclass
class Rejects(Counts):
    """The reject ledger: records left out while reading or rendering, by reason."""

    records_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class SplitTotals(Counts):
    """What splitting long conversations did (pack/split.py)."""

    conversations_truncated: int = 0
    conversations_dropped_long: int = 0
    conversations_split: int = 0
    pieces_split: int = 0  # pieces that came out of split conversations
    exchanges_split: int = 0  # single messages cut across pieces
    prompts_shortened: int = 0


@dataclass
class LabelContext(Counts):
    """Which trained labels keep their context in their piece (or, packed linearly, their row)."""

    prompted_labels: int = 0  # trained labels whose turn has a prompting user message
    prompted_labels_complete: int = 0  # ... whose prompt (and tool results) are entirely inside the same piece
    # The rest were counted only by later versions (None in earlier manifests).
    turn_labels_whole: int | None = None  # trained labels whose own message is in the same piece from its first token
    answer_labels: int | None = None  # trained labels of turns that answer tool results
    answer_labels_complete: int | None = None  # ... whose prompt and tool results are entirely inside the same piece
    answer_labels_whole: int | None = None  # ... whose own message is in the same piece from its first token


@dataclass
class RowCounts(Counts):
    """What the rows hold."""

    chunks: int = 0
    nonpad_positions: int = 0
    trained_tokens_kept: int = 0
    bos_starts: int | None = None  # rows that start with BOS (None: the tokenizer has none)
    labels_with_bos_and_user: int | None = None  # trained labels with BOS and a user turn before them in their piece


G = TypeVar("G", bound=Counts)


@dataclass
class UnitCounters(Counts):
    """A unit's counters (or the sum of several units'), group by group."""

    read: ReadCounts | None = None
    chat: ChatTurns | None = None
    rendered: RenderCounts | None = None
    packed: PackCounts | None = None
    rejects: Rejects | None = None
    split: SplitTotals | None = None
    context: LabelContext | None = None
    rows: RowCounts | None = None

    def to_dict(self) -> dict[str, Any]:
        """The counters flat, as a manifest and dataset.json store them."""
        groups = (getattr(self, name) for name in _names(type(self)))
        return {key: value for group in groups if group is not None for key, value in group.to_dict().items()}

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> UnitCounters:
        """Counters stored flat (by any version); a group none of whose counters is there stays None.

        Raises ValueError where `flat` holds a counter no group names.
        """
        known: set[str] = set()

        def group(kind: type[G]) -> G | None:
            own = {name: flat[name] for name in _names(kind) if name in flat}
            known.update(own)
            return kind.from_dict(own) if own else None

        counters = cls(read=group(ReadCounts), chat=group(ChatTurns), rendered=group(RenderCounts),
                       packed=group(PackCounts), rejects=group(Rejects), split=group(SplitTotals),
                       context=group(LabelContext), rows=group(RowCounts))
        _check_known(flat, known)
        return counters


def merge_counters(flat: Iterable[Mapping[str, Any]]) -> UnitCounters:
    """The sum of counters stored flat (the shard manifests')."""
    return sum((UnitCounters.from_dict(counters) for counters in flat), UnitCounters())


def _ratio(num: int | None, den: int | None) -> float | None:
    return round((num or 0) / den, 6) if den else None


def summarize(counters: UnitCounters, seq_length: int, files_skipped: int = 0) -> dict[str, Any]:
    """The figures of `packsft stats --json`, derived from summed counters (and the skipped-file count).

    A group no unit counted reads as its defaults (0, or None where a figure is n/a without it).
    """
    read, rendered = counters.read or ReadCounts(), counters.rendered or RenderCounts()
    split, rows = counters.split or SplitTotals(), counters.rows or RowCounts()
    rejects, packed = counters.rejects or Rejects(), counters.packed or PackCounts()
    chunks, kept = rows.chunks, rows.trained_tokens_kept
    return {
        "chunks": chunks,
        "seq_length": seq_length,
        "fill": _ratio(rows.nonpad_positions, chunks * (seq_length + 1)),
        "trained_fraction": _ratio(kept, chunks * seq_length),
        "bos_start_fraction": _ratio(rows.bos_starts, chunks) if rows.bos_starts is not None else None,
        "conversations_read": read.conversations_read,
        "conversations_packed": packed.conversations_packed,
        "conversations_truncated": split.conversations_truncated,
        "conversations_split": split.conversations_split,
        "conversations_dropped": split.conversations_dropped_long + read.conversations_dropped_no_trained
        + rendered.conversations_dropped_unprompted,
        "conversations_dropped_long": split.conversations_dropped_long,
        "conversations_dropped_no_trained": read.conversations_dropped_no_trained,
        # Read, then refused by the chat template (counted in records_rejected too).
        "conversations_rejected_rendering": read.conversations_rejected_rendering or 0,
        "conversations_dropped_unprompted": rendered.conversations_dropped_unprompted,
        "records_filtered": read.records_filtered,
        **({"records_other_split": read.records_other_split} if read.records_other_split is not None else {}),
        **({"mix_sources": _mix_sources(read.mix_sources)} if read.mix_sources is not None else {}),
        "files_skipped": files_skipped,
        "records_rejected": rejects.records_rejected,
        "rejected_by_reason": dict(sorted(rejects.rejected_by_reason.items())),
        "tokens_rendered": rendered.tokens_rendered,
        "trainable_tokens_available": rendered.trainable_tokens_available,
        "trained_tokens_kept": kept,
        "trained_retention": _ratio(kept, rendered.trainable_tokens_available),
        "trained_unprompted": rendered.trained_unprompted,
        **_context_figures(counters.context or LabelContext(), kept),
        "special_strings_in_content": rendered.special_strings_in_content or 0,
        "labels_with_bos_and_user": _ratio(rows.labels_with_bos_and_user, kept)
        if rows.labels_with_bos_and_user is not None
        else None,
        "pieces": packed.pieces,
        "pieces_split": split.pieces_split,
        "exchanges_split": split.exchanges_split,
        "prompts_shortened": split.prompts_shortened,
        # Chat templates only (None for role tokens): what the template's rendering does to trained turns, and the
        # extra renderings --turns inference packs.
        **(counters.chat.to_dict() if counters.chat is not None else dict.fromkeys(CHAT_TURN_COUNTERS)),
        "per_source": _per_source(packed.per_source),
    }


def records_read(stats: Mapping[str, Any]) -> int:
    """Records read that reached validation (--source-filter's are not): the valid conversations read plus the
    records rejected before rendering. What `records_rejected` counts among, and the reject threshold's base.

    A conversation read and then rejected by the chat template or for having no trained token counts once, not
    twice. Derived from the summary, so every output's stats give it, whatever version wrote them.
    """
    return (stats["conversations_read"] + stats["records_rejected"] - stats["conversations_dropped_no_trained"]
            - (stats.get("conversations_rejected_rendering") or 0))


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 file', '2 files', '1,024 records'."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def _context_figures(context: LabelContext, kept: int) -> dict[str, float | None]:
    return {
        "context_completeness": _ratio(context.prompted_labels_complete, context.prompted_labels),
        # Trained labels whose own message is in the same piece from its first token (no beheaded turn).
        "turn_prefix_completeness": _ratio(context.turn_labels_whole, kept)
        if context.turn_labels_whole is not None
        else None,
        # The same two, over the trained labels of turns that answer tool results (None: no such turn).
        "tool_answer_context_completeness": _ratio(context.answer_labels_complete, context.answer_labels),
        "tool_answer_turn_prefix_completeness": _ratio(context.answer_labels_whole, context.answer_labels),
    }


def _mix_sources(counts: dict[str, MixCounts]) -> dict[str, dict[str, Any]]:
    """Per --mix source: its counters and its share of the output's tokens (of the mixed sources' tokens)."""
    total = sum(m.tokens_kept for m in counts.values())
    return {name: {**m.to_dict(), "records_left_out": m.records_read - m.records_kept,
                   "token_share": _ratio(m.tokens_kept, total)} for name, m in sorted(counts.items())}


def _per_source(counts: dict[str, SourceCounts]) -> dict[str, dict[str, Any]]:
    return {
        source: {
            "conversations": s.conversations,
            "truncated": s.truncated,
            "dropped": s.dropped,
            "trainable_tokens_available": s.trainable,
            "trained_tokens_kept": s.kept,
            "trained_retention": _ratio(s.kept, s.trainable),
            "fill": _ratio(s.tokens, s.tokens + s.pad_share),
        }
        for source, s in sorted(counts.items())
    }


def warnings(summary: dict[str, Any], config: dict[str, Any], chat_history: Mapping[str, bool] | None = None) -> list[str]:
    """The summary's warnings; `chat_history` is dataset.json's (report.template.history_rewrites)."""
    notes = []
    kept = summary["trained_tokens_kept"]
    if kept and summary["trained_unprompted"] / kept > UNPROMPTED_WARN_SHARE and config.get("unprompted") == "keep":
        share = summary["trained_unprompted"] / kept
        notes.append(
            f"{share:.1%} of trained tokens are assistant turns no user message prompts "
            "(conversations that open with the assistant); --unprompted mask keeps them as context only"
        )
    if summary.get("special_strings_in_content"):
        notes.append(
            f"{summary['special_strings_in_content']} messages contained special-token strings "
            "(e.g. <|endoftext|>); they were encoded as plain text"
        )
    rewritten, dropped = summary.get("turns_rewritten_in_history"), summary.get("reasoning_tokens_dropped")
    if rewritten or dropped:
        notes.append(_rewritten_note(summary, rewritten or 0, dropped or 0, chat_history or {}))
    if summary.get("stop_tokens_appended"):
        notes.append(_stop_note({"stop_tokens_appended": summary["stop_tokens_appended"]}))
    if summary.get("inference_renderings_added"):
        rows = _rows(summary, summary["inference_context_tokens"])
        notes.append(
            f"--turns inference added {summary['inference_renderings_added']:,} renderings with "
            f"{summary['inference_context_tokens']:,} tokens of repeated context (~{rows:,} of the "
            f"{summary['chunks']:,} rows)"
        )
    if summary["conversations_truncated"]:
        notes.append(
            f"{summary['conversations_truncated']} conversations were truncated; --long split keeps every trained token"
        )
    return notes


# --template-kwargs as the summary names it: the value that keeps a plain turn as generated in history.
THINKING_OFF_FLAG = """--template-kwargs '{"enable_thinking": false}'"""


def _rewritten_note(summary: dict[str, Any], rewritten: int, dropped: int, chat_history: Mapping[str, bool]) -> str:
    """Turns trained as the template shows them in history: what they are, and the two ways out with their cost."""
    note = (f"{rewritten:,} trained assistant turns are rendered otherwise when they are not the last turn, and "
            f"{dropped:,} reasoning tokens are left out by the chat template: those turns are trained as the template "
            "shows them in history, not as the model generates them")
    if chat_history.get("thinking_off_keeps_history"):
        note += (f"; for conversations without reasoning, {THINKING_OFF_FLAG} makes this template show earlier turns "
                 "as generated (no extra rows; a record's own chat_template_kwargs win)")
    conversations = summary.get("conversations_packed") or 0
    if not conversations:
        return note + "; --turns inference trains each as generated"
    # Each rewritten turn gets a rendering of its own: itself after the history before it. Taken as half a
    # conversation of mean length (the rewritten turns are earlier ones, spread over their conversations).
    extra = round(rewritten * summary.get("tokens_rendered", 0) / conversations / 2)
    rows = _rows(summary, extra)
    share = f", +{rows / summary['chunks']:.0%}" if summary.get("chunks") else ""
    return (note + f"; --turns inference trains each as generated, at about {extra:,} more tokens, ~{rows:,} more "
            f"rows than the {summary['chunks']:,}{share} (an estimate from the mean conversation length, low where "
            "the conversations with rewritten turns are longer than the mean; after such a run, stats give "
            "inference_context_tokens)")


def _stop_note(summary: dict[str, Any], tokenizer: Mapping[str, Any] | None = None) -> str:
    """What the trained turns that the template renders no stop token after end with."""
    eos = ((tokenizer or {}).get("special_ids") or {}).get("eos")
    parts = []
    if summary.get("stop_tokens_appended"):
        parts.append(f"{summary['stop_tokens_appended']:,} trained last turns render no stop token (the model stops on "
                     f"the next role token, which a last turn has none of): EOS{f' (id {eos})' if eos is not None else ''} "
                     "was appended and trained as their end")
    if summary.get("turns_ended_without_stop_token"):
        parts.append(f"{summary['turns_ended_without_stop_token']:,} trained turns end with a template token that is not "
                     "one of the model's stop tokens (EOS, generation_config.json's eos_token_id); that token is trained "
                     "as their end (e.g. gpt-oss's <|end|> in history; --turns inference trains such turns as generated)")
    return "; ".join(parts)


def _rows(summary: dict[str, Any], tokens: int) -> int:
    """About how many rows `tokens` tokens fill at this output's fill."""
    return math.ceil(tokens / ((summary["seq_length"] + 1) * (summary.get("fill") or 1)))


def _cut(text: str, width: int) -> str:
    """`text` in `width` characters, '…' in the middle for what is left out (a file path keeps its start and end)."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[-tail:]


def _split_line(cfg: Mapping[str, Any], s: Mapping[str, Any]) -> str:
    """Where the held-out split sent the records: how many this output read, how many went to the other side."""
    how = f"{cfg['eval_fraction']:g} of the records" if cfg.get("eval_fraction") is not None else \
        counted(cfg["eval_records"], "record")
    other = s.get("records_other_split") or 0
    if cfg["split"] == "eval":
        return f"  eval split ({how}, by content): {counted(records_read(s), 'record')} here, {other:,} left to training"
    return f"  held out for eval ({how}, by content): {counted(other, 'record')}, packed in eval/"


def _mix_lines(cfg: Mapping[str, Any], mixed: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What --mix did, source by source: its weight or epochs and rate, records kept and repeated, tokens."""
    given = {entry["path"]: entry for entry in cfg.get("mix") or ()}
    left_out = sum(row["records_left_out"] for row in mixed.values())
    repeats = sum(row["repeats"] for row in mixed.values())
    width = min(max([6] + [len(name) for name in mixed]), SOURCE_WIDTH)
    lines = [f"  mixed by tokens (--mix): {counted(left_out, 'record')} left out, {counted(repeats, 'repeat')} added",
             f"    {'source':<{width}} {'asked':>12} {'rate':>7} {'read':>9} {'kept':>9} {'repeats':>9} "
             f"{'tokens available':>17} {'in output':>12} {'share':>7}"]
    for name, row in mixed.items():
        entry = given.get(name, {})
        asked = f"weight {entry['weight']:g}" if entry.get("weight") is not None else \
            f"{entry['epochs']:g} epochs" if entry.get("epochs") is not None else "-"
        available = f"{entry['tokens']:,}" if entry.get("tokens") is not None else "n/a"
        rate = f"{entry['rate']:.3f}" if entry.get("rate") is not None else "-"
        share = "n/a" if row["token_share"] is None else f"{100 * row['token_share']:.1f}%"
        lines.append(f"    {_cut(name, width):<{width}} {asked:>12} {rate:>7} {row['records_read']:>9,} "
                     f"{row['records_kept']:>9,} {row['repeats']:>9,} {available:>17} {row['tokens_kept']:>12,} "
                     f"{share:>7}")
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _chat_lines(s: dict[str, Any], cfg: dict[str, Any], tok: dict[str, Any]) -> list[str]:
    """What a chat template did to trained turns and their stop tokens (nothing for role tokens)."""
    lines = []
    if s.get("turns_rewritten_in_history") is not None:
        lines.append(
            f"  chat turns: {s['turns_rewritten_in_history']:,} trained turns rewritten in history, "
            f"{s['reasoning_tokens_dropped']:,} reasoning tokens dropped by the template (--turns {cfg.get('turns', 'rendered')}"
            + (f": {s['inference_renderings_added']:,} renderings added, {s['inference_context_tokens']:,} tokens of "
               "repeated context)" if s.get("inference_renderings_added") else ")"))
    if s.get("stop_tokens_appended") or s.get("turns_ended_without_stop_token"):
        lines.append(f"  stop tokens: {_stop_note(s, tok)}")
    return lines


def _source_lines(per_source: dict[str, Any]) -> list[str]:
    """The per-source table, where there is more than one source or a named one."""
    if not (len(per_source) > 1 or any(k for k in per_source if k != NO_SOURCE)):
        return []
    shown = list(per_source.items())[:MAX_SOURCES_SHOWN]
    width = min(max([24] + [len(source) for source, _ in shown]), SOURCE_WIDTH)
    lines = ["", f"  {'source':<{width}} {'convs':>8} {'fill':>7} {'retention':>10} {'truncated':>10}"]
    for source, row in shown:
        lines.append(f"  {_cut(source, width):<{width}} {row['conversations']:>8,} {_pct(row['fill']):>7} "
                     f"{_pct(row['trained_retention']):>10} {row['truncated']:>10,}")
    if len(per_source) > MAX_SOURCES_SHOWN:
        lines.append(f"  ... and {counted(len(per_source) - MAX_SOURCES_SHOWN, 'more source')} "
                     "(all of them: packsft stats --json)")
    lines.append("  (a source's fill counts its conversations' own tokens once; the overall fill also counts "
                 "context repeated by splits)")
    return lines


def format_summary(dataset: dict[str, Any]) -> str:
    """A readable summary of a packed output (what `packsft stats` prints)."""
    s = dataset["stats"]
    cfg = dataset["config"]
    tok = dataset["tokenizer"]
    pct = _pct
    lines = [
        f"packsft output: {s['chunks']:,} chunks x {s['seq_length']} tokens ({dataset['dtype']})",
        f"  strategy {cfg['strategy']}, mask {cfg['mask']}, long {cfg['long'] or '-'}, unprompted {cfg['unprompted']}, "
        f"template {cfg['template']}",
        f"  tokenizer {tok['name']} (vocab {tok['vocab_size']:,}, {tok['fingerprint'][:12]})",
        "",
        f"  fill                 {pct(s['fill'])}   (non-pad positions / all positions)",
        f"  trained fraction     {pct(s['trained_fraction'])}   (trained labels / chunks x L)",
        f"  starts at BOS        {pct(s['bos_start_fraction'])}",
        f"  trained retention    {pct(s['trained_retention'])}   "
        f"({s['trained_tokens_kept']:,} of {s['trainable_tokens_available']:,} trainable tokens kept)",
        f"  context completeness {pct(s['context_completeness'])}   (prompted labels whose question, and the tool results they answer, are in the same piece)",
        f"  turn prefix complete {pct(s.get('turn_prefix_completeness'))}   (trained labels whose own turn is in the same piece from its start)",
        *([f"  after tool results   {pct(s['tool_answer_context_completeness'])} context, "
           f"{pct(s.get('tool_answer_turn_prefix_completeness'))} turn prefix   (labels of turns that answer tool results)"]
          if s.get("tool_answer_context_completeness") is not None else []),
        f"  BOS + user before    {pct(s['labels_with_bos_and_user'])}   (trained labels with BOS and a user turn before them in their piece)",
        "",
        f"  records read {records_read(s):,}, rejected {s['records_rejected']:,}, "
        f"filtered by source {s['records_filtered']:,}",
    ]
    if cfg.get("split") is not None:
        lines.append(_split_line(cfg, s))
    if s.get("mix_sources"):
        lines += _mix_lines(cfg, s["mix_sources"])
    reasons = sorted(s.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])[:5]
    for reason, count in reasons:
        lines.append(f"    {count:>6,}  {reason}")
    if s.get("files_skipped"):
        lines.append(f"  files skipped {s['files_skipped']:,} (unreadable; see skipped_files in dataset.json)")
    lines += [
        f"  conversations packed {s['conversations_packed']:,}, split {s['conversations_split']:,}, "
        f"truncated {s['conversations_truncated']:,}, dropped {s['conversations_dropped']:,}",
        # .get: outputs of versions before these counters
        f"  pieces {s.get('pieces') or 0:,} ({s.get('pieces_split') or 0:,} from splits), exchanges split "
        f"{s.get('exchanges_split') or 0:,}, prompts shortened {s.get('prompts_shortened') or 0:,}",
    ]
    lines += _chat_lines(s, cfg, tok) + _source_lines(s.get("per_source") or {})
    for note in warnings(s, cfg, dataset.get("chat_history")):
        lines.append(f"  warning: {note}")
    return "\n".join(lines)
