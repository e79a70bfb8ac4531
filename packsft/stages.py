"""The stages composed for one unit of work, in memory: read -> render -> pack -> chunks, with its counters.

    input rows --read--> Conversation batches --render--> RenderedBatch (ids, flags, message spans)
      --drop untrainable/unprompted--> --split_long--> PieceTable --pack_*--> Packing --> Chunks

No I/O besides reading the unit's input: `run/unit.py` writes the shard, `verify --deep` compares the
chunks with a written one. A unit is any sequence of input slices (`InputSlice`: a file and its row-group
range); the runner's `run.plan.Unit` parts are such slices.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from packsft.config import PackConfig
from packsft.errors import ConfigError
from packsft.pack.bins import pack_aligned, pack_bestfit, slot_lengths
from packsft.pack.cuts import SafeCuts
from packsft.pack.labels import answer_flags, message_starts, prompt_starts
from packsft.pack.rows import (
    Chunks,
    build_chunks,
    build_linear_chunks,
    labels_with_bos_and_user,
)
from packsft.pack.split import split_long
from packsft.pack.table import PieceTable
from packsft.read.heldout import RecordSplit
from packsft.read.inputs import Location
from packsft.read.mix import RecordMix, parse_mix
from packsft.read.reader import InputFile, open_input, read_conversations
from packsft.read.records import ASSISTANT, TEXT, USER, Conversation, RejectLedger, parse_role_map
from packsft.render.batch import RenderedBatch, trained_unprompted
from packsft.render.markers import OMITTED_MARKER, Marker
from packsft.render.renderers import make_renderer
from packsft.render.tokenizer import PackTokenizer, token_texts
from packsft.stats import (
    LENGTH_BIN,
    LENGTH_BINS,
    NO_SOURCE,
    ChatTurns,
    Histogram,
    LabelContext,
    MixCounts,
    PackCounts,
    ReadCounts,
    Rejects,
    RenderCounts,
    RowCounts,
    SourceCounts,
    SplitTotals,
    UnitCounters,
)

if TYPE_CHECKING:  # imported where a bar is shown (run/local.py): workers never need tqdm (25 ms)
    from tqdm import tqdm


def _record(conversation: Conversation) -> dict[str, Any]:
    """The record as rejects.jsonl shows it."""
    return {"messages": [{"role": role, "content": content} for role, content in conversation.messages]}


def _reject_rendering(rejects: RejectLedger, failed: set[int], conversation: Conversation, reason: str) -> None:
    failed.add(id(conversation))
    rejects.reject(conversation.file, conversation.row, reason, _record(conversation))


def _reject_untrainable(batch: RenderedBatch, conversations: list[Conversation], config: PackConfig,
                        rejects: RejectLedger) -> tuple[RenderedBatch, np.ndarray]:
    """Send conversations without a trained token to the ledger (they only cost compute) and drop them; returns the
    batch of the others and which those are.

    Conversations --unprompted drop removes are not rejects; pack_unit counts them separately.
    """
    no_trained = (batch.trainable_per_conversation() == 0) & ~(batch.unprompted & (config.unprompted == "drop"))
    for index in np.flatnonzero(no_trained).tolist():
        conversation = conversations[index]
        roles = {role for role, _ in conversation.messages}
        no_assistant = config.mask == "assistant_only" and not roles & {ASSISTANT, TEXT}
        reason = "no assistant message" if no_assistant else "no trained token"
        rejects.reject(conversation.file, conversation.row, reason, _record(conversation))
    return (batch.select(~no_trained) if no_trained.any() else batch), ~no_trained


class InputSlice(Protocol):
    """A file of a unit and the row groups of it the unit reads (None = all)."""

    @property
    def path(self) -> Location: ...
    @property
    def name(self) -> str: ...
    @property
    def row_groups(self) -> tuple[int, int] | None: ...
    # The --mix source (its path inside DATA) the file belongs to; read only in mixed runs.
    @property
    def mix_source(self) -> str | None: ...


def open_unit(parts: Sequence[InputSlice], config: PackConfig) -> list[InputFile]:
    """The unit's input files (one unless --group-files grouped several), opened as the pack reads them
    (format, input format, role map)."""
    aliases = parse_role_map(config.role_map)
    return [open_input(part.path, config.format, config.input_format, aliases) for part in parts]


@dataclass
class ReadUnit:
    """The unit's records rendered into one batch, and what happened to the others on the way."""

    batch: RenderedBatch
    # None where the unit yields no record batch (an empty file): its manifest then has no read counters, as
    # earlier versions wrote it.
    counts: ReadCounts | None
    chat: ChatTurns | None = None  # ChatRenderer.counts (None for role tokens)


@dataclass
class PackedUnit:
    """The rows of a unit and, per conversation, what packing kept of it."""

    chunks: Chunks
    pieces: int
    conversations_packed: int
    kept: np.ndarray  # trained labels kept, per conversation
    pad_share: np.ndarray  # share of row padding (by tokens in the row), per conversation
    context: LabelContext
    split: SplitTotals | None = None  # None for linear packing, which never splits
    truncated: list[int] = field(default_factory=list)  # conversations cut short by --long truncate
    dropped: list[int] = field(default_factory=list)  # ... left out by --long drop


def pack_unit(
    parts: Sequence[InputSlice],
    sources: list[InputFile],
    config: PackConfig,
    tokenizer: PackTokenizer,
    rejects: RejectLedger,
    progress: tqdm | None = None,
) -> tuple[Chunks, UnitCounters]:
    """Pack one unit into chunks in memory; returns the chunks and the unit's counters.

    Memory: the rendered tokens are the unit's biggest array after the rows; they are let go as soon as
    the rows exist, before the row statistics (see scripts/bench.py for the peak per token).
    """
    return pack_read(read_unit(parts, sources, config, tokenizer, rejects, progress), config, tokenizer, rejects)


def pack_read(read: ReadUnit, config: PackConfig, tokenizer: PackTokenizer,
              rejects: RejectLedger, marker: Marker | None = None) -> tuple[Chunks, UnitCounters]:
    """Pack a unit read and rendered (read_unit, or the rendered-token store) into chunks; returns them and the
    unit's counters. Never tokenizes the conversations (only the short '[… N tokens omitted]' markers of split
    pieces, by `marker` where given, and the token texts where a turn is cut inside)."""
    trainable = read.batch.trainable_per_conversation()
    drop_unprompted = read.batch.unprompted & (config.unprompted == "drop")
    batch, trainable = read.batch.select(~drop_unprompted), trainable[~drop_unprompted]
    histogram = np.bincount(np.minimum(batch.lengths // LENGTH_BIN, LENGTH_BINS - 1), minlength=LENGTH_BINS)
    rendered = RenderCounts(
        tokens_rendered=len(read.batch.ids), special_strings_in_content=read.batch.special_strings,
        conversations_dropped_unprompted=int(drop_unprompted.sum()), trainable_tokens_available=int(trainable.sum()),
        trained_unprompted=trained_unprompted(batch), length_histogram=Histogram(histogram.tolist()),
    )
    read.batch = batch  # the only rendering kept from here on
    packed = pack_linear(batch, trainable, config, tokenizer) if config.strategy == "linear" else \
        pack_pieces(batch, config, tokenizer, marker)
    counters = UnitCounters(
        read=read.counts, chat=read.chat, rendered=rendered, split=packed.split, context=packed.context,
        packed=PackCounts(conversations_packed=packed.conversations_packed, pieces=packed.pieces,
                          per_source=source_counters(batch, trainable, packed)),
        rejects=Rejects(records_rejected=rejects.total, rejected_by_reason=dict(rejects.counts)),
    )
    del batch, read  # the rendered tokens
    counters.rows = row_counters(packed.chunks, tokenizer)
    return packed.chunks, counters


def read_unit(parts: Sequence[InputSlice], sources: list[InputFile], config: PackConfig, tokenizer: PackTokenizer,
              rejects: RejectLedger, progress: tqdm | None = None) -> ReadUnit:
    """Read and render the unit batch by batch, file after file; unrenderable and untrainable conversations
    go to `rejects`."""
    renderer = make_renderer(tokenizer, config)
    batches, counts, tokens = [], ReadCounts(), 0
    split = RecordSplit(config.split_threshold, config.split) \
        if config.split is not None and config.split_threshold is not None else None
    mixes = unit_mixes(parts, config)
    records = itertools.chain.from_iterable(
        read_conversations(source, config.format, rejects, source_filter=config.source_filter,
                           batch_size=config.batch_size, display_name=part.name, row_groups=part.row_groups,
                           split=split, mix=mixes[index] if mixes else None)
        for index, (part, source) in enumerate(zip(parts, sources))
    )
    mixed = {part.name: [part.mix_source, 0, 0] for part in parts} if mixes else {}  # per file: source, repeats, tokens

    def set_aside() -> int:  # records the held-out split or the mix left out so far
        return (split.elsewhere if split is not None else 0) + sum(mix.records_left_out for mix in mixes or ())

    seen, elsewhere = rejects.total, 0
    for records_read, left_out in records:
        invalid = rejects.total - seen  # records the reader rejected on the way to this batch
        held = set_aside() - elsewhere  # records of the held-out split's other side, or left out by the mix
        elsewhere += held
        failed: set[int] = set()
        conversations = renderer.prepare(records_read)
        batch = renderer.render(conversations, reject=functools.partial(_reject_rendering, rejects, failed))
        rendered = [c for c in conversations if id(c) not in failed] if failed else conversations
        batch, trainable = _reject_untrainable(batch, rendered, config, rejects)
        rejected = len(trainable) - int(trainable.sum())
        if mixes:
            batch = repeat_copies(batch, list(itertools.compress(rendered, trainable.tolist())), mixed)
        batches.append(batch)
        tokens += len(batch.ids)
        # `or None`: counted only where they happen, so that the manifests of other units stay as they were.
        counts += ReadCounts(
            conversations_read=len(records_read), records_filtered=left_out, conversations_dropped_no_trained=rejected,
            conversations_rejected_rendering=len(failed) or None,
            assistant_turns_untrained=sum(1 for c in conversations if c.extras is not None for i, (role, _)
                                          in enumerate(c.messages) if role == ASSISTANT and not c.trains(i)) or None,
        )
        seen = rejects.total
        if progress is not None:  # input records, as the bar's total counts them (--turns may render more)
            progress.update(len(records_read) + left_out + invalid + held)
            progress.set_postfix_str(_rate(progress, tokens), refresh=False)
    if progress is not None and (split is not None or mixes):
        progress.update(set_aside() - elsewhere)  # records left out after the last batch
    if split is not None:
        counts += ReadCounts(records_other_split=split.elsewhere)
    if mixes:
        counts += ReadCounts(mix_sources=mix_counts(parts, mixes, mixed))
    renderer.keep()
    if not batches:
        return ReadUnit(renderer.render([]), counts if (split is not None and split.elsewhere) or mixes else None)
    chat = replace(renderer.counts) if renderer.counts is not None else None
    return ReadUnit(RenderedBatch.concat(batches), counts, chat)


def unit_mixes(parts: Sequence[InputSlice], config: PackConfig) -> list[RecordMix] | None:
    """The mix of each of the unit's files at its source's rate (read/mix.py); None in runs without --mix."""
    if config.mix is None:
        return None
    rates = {source.path: source.rate for source in parse_mix(config.mix)}
    mixes = []
    for part in parts:
        rate = rates.get(part.mix_source or "")
        if rate is None:
            raise ConfigError(f"{part.name}: no rate for its --mix source {part.mix_source!r}; plan the run with "
                              "run_pack, which resolves the mix")
        mixes.append(RecordMix(rate))
    return mixes


def repeat_copies(batch: RenderedBatch, conversations: list[Conversation], mixed: dict[str, list[Any]]) -> RenderedBatch:
    """The batch with each rendering as many times as its record's copies (the further copies after the batch), its
    repeats and tokens counted per file in `mixed`."""
    copies = np.fromiter((c.copies for c in conversations), np.int64, len(conversations))
    for conversation, count, length in zip(conversations, copies.tolist(), batch.lengths.tolist()):
        tally = mixed[conversation.file]
        tally[1] += count - 1
        tally[2] += count * length
    # A further copy counts no special strings again: they are counted once per message rendered.
    extra = [replace(batch.select(copies > k), special_strings=0) for k in range(1, int(copies.max(initial=1)))]
    return RenderedBatch.concat([batch, *extra]) if extra else batch


def mix_counts(parts: Sequence[InputSlice], mixes: list[RecordMix], mixed: dict[str, list[Any]]) -> dict[str, MixCounts]:
    """The unit's mix counters by source (its files' summed)."""
    counts: dict[str, MixCounts] = {}
    for part, mix in zip(parts, mixes):
        source, repeats, tokens = mixed[part.name]
        one = MixCounts(records_read=mix.records_read, records_kept=mix.records_read - mix.records_left_out,
                        repeats=repeats, tokens_kept=tokens)
        counts[source] = counts[source] + one if source in counts else one
    return counts


def pack_linear(batch: RenderedBatch, trainable: np.ndarray, config: PackConfig, tokenizer: PackTokenizer) -> PackedUnit:
    """Stream the conversations across rows (nothing is too long; the last row holds all the padding)."""
    chunks = build_linear_chunks(batch.ids, batch.flags, batch.conv_offsets, config.seq_length, tokenizer.pad_id)
    kept = trainable.copy()
    if len(batch):
        kept[0] -= int(batch.flags[0])  # the very first token is never a label
    pad_share = np.zeros(len(batch))
    if len(batch) and chunks.rows:
        pad_share[-1] = chunks.rows * (config.seq_length + 1) - chunks.nonpad
    return PackedUnit(chunks, len(batch), len(batch), kept, pad_share, _linear_context(batch, config.seq_length))


def pack_pieces(batch: RenderedBatch, config: PackConfig, tokenizer: PackTokenizer,
                marker: Marker | None = None) -> PackedUnit:
    """Split long conversations into pieces, pack the pieces into rows (best-fit or aligned); `marker` encodes the
    omission markers (default: the tokenizer)."""
    policy = config.long_policy or "split"  # None only for linear packing, which never splits
    # Padded segments tile the row's L inputs (L is a multiple of pad_multiple), so a piece takes at most L.
    longest = config.seq_length if config.pad_multiple == 1 else config.seq_length - 1
    pieces, split_counts = split_long(batch, longest, policy, marker or _marker(tokenizer), config.turn_cut,
                                      config.context_share, safe=SafeCuts(functools.partial(token_texts, tokenizer),
                                                                       config.cut_at_lines),
                                      start_share=config.prompt_start_share)
    packer = pack_bestfit if config.strategy == "bestfit" else pack_aligned
    slots = slot_lengths(pieces.lengths, config.pad_multiple)
    packing = packer(slots, config.seq_length + 1, config.max_segments)
    chunks = build_chunks(pieces, packing, config.seq_length, tokenizer.pad_id, slots)
    kept, pad_share = _piece_shares(pieces, packing.order, chunks, len(batch), config.seq_length + 1)
    return PackedUnit(
        chunks, len(pieces), len(np.unique(pieces.conv)), kept, pad_share,
        LabelContext.of(split_counts), SplitTotals.of(split_counts),
        truncated=split_counts.truncated_or_dropped if policy == "truncate" else [],
        dropped=split_counts.truncated_or_dropped if policy == "drop" else [],
    )


def row_counters(chunks: Chunks, tokenizer: PackTokenizer) -> RowCounts:
    """What the rows hold: chunks, non-pad positions, trained labels, BOS starts, BOS + user labels."""
    # Chat templates without a BOS leave bos_starts out (None): 'starts at BOS' is n/a.
    bos_starts = int((chunks.tokens[:, 0] == tokenizer.bos_id).sum()) if tokenizer.bos_id is not None else None
    return RowCounts(chunks=chunks.rows, nonpad_positions=chunks.nonpad,
                     trained_tokens_kept=int(chunks.loss_mask.sum(dtype=np.int64)), bos_starts=bos_starts,
                     labels_with_bos_and_user=labels_with_bos_and_user(chunks, tokenizer.bos_id,
                                                                       tokenizer.role_ids.get(USER)))


def source_counters(batch: RenderedBatch, trainable: np.ndarray, packed: PackedUnit) -> dict[str, SourceCounts]:
    """Per source: conversations, trainable and kept labels, tokens, pad share, truncated, dropped."""
    codes, names = _source_codes(batch.sources)
    per_source = {}
    for code, name in enumerate(names):
        members = codes == code
        per_source[name] = SourceCounts(
            conversations=int(members.sum()),
            trainable=int(trainable[members].sum()),
            kept=int(packed.kept[members].sum()),
            tokens=int(batch.lengths[members].sum()),
            pad_share=int(round(float(packed.pad_share[members].sum()))),
            truncated=int(np.isin(np.flatnonzero(members), packed.truncated).sum()),
            dropped=int(np.isin(np.flatnonzero(members), packed.dropped).sum()),
        )
    return per_source


def _rate(progress: tqdm, tokens: int) -> str:
    elapsed = progress.format_dict.get("elapsed") or 0
    return f"{tokens / elapsed / 1e3:,.0f}k tok/s" if elapsed else ""


def _source_codes(sources: list[str | None]) -> tuple[np.ndarray, list[str]]:
    names = sorted({s if s is not None else NO_SOURCE for s in sources})
    lookup = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((lookup[s if s is not None else NO_SOURCE] for s in sources), np.int64, len(sources))
    return codes, names


def _marker(tokenizer: PackTokenizer) -> Marker:
    cache: dict[int, list[int]] = {}

    def marker(n: int) -> list[int]:
        if n not in cache:
            cache[n] = tokenizer.encode_few([OMITTED_MARKER.format(n=n)])[0]
        return cache[n]

    return marker


def _piece_shares(pieces: PieceTable, order: np.ndarray, chunks: Chunks, conversations: int, capacity: int):
    """Per conversation: trained labels kept, and its share of row padding (by tokens in the row)."""
    kept = np.zeros(conversations, np.int64)
    pad = np.zeros(conversations, np.float64)
    if not len(pieces):
        return kept, pad
    piece_kept = np.add.reduceat(pieces.flags, pieces.offsets[:-1], dtype=np.int64)
    placed_kept = piece_kept[order]
    row_first = chunks.row_segments[:-1][np.diff(chunks.row_segments) > 0]
    placed_kept[row_first] -= pieces.flags[pieces.offsets[order[row_first]]]  # first token of a row: no label
    lengths = pieces.lengths[order]
    used = np.bincount(chunks.piece_rows, weights=lengths, minlength=chunks.rows)
    row_pad = capacity - used
    share = row_pad[chunks.piece_rows] * lengths / used[chunks.piece_rows]
    np.add.at(kept, pieces.conv[order], placed_kept)
    np.add.at(pad, pieces.conv[order], share)
    return kept, pad


def _linear_context(batch: RenderedBatch, seq_length: int) -> LabelContext:
    """For stream packing: prompted trained labels, and those whose prompt lies wholly in the label's row."""

    starts = prompt_starts(batch)
    positions = np.flatnonzero((starts >= 0) & batch.flags.astype(bool))
    positions = positions[positions >= 1]  # the first stream token is never a label
    rows = (positions - 1) // seq_length
    complete = starts[positions] >= rows * seq_length
    trained = np.flatnonzero(batch.flags.astype(bool))
    trained = trained[trained >= 1]
    whole = message_starts(batch)[trained] >= (trained - 1) // seq_length * seq_length
    # A turn that answers tool results: its prompt comes before the results, so a prompt in the row holds them too.
    answers = answer_flags(batch).astype(bool)
    return LabelContext(prompted_labels=len(positions), prompted_labels_complete=int(complete.sum()),
                        turn_labels_whole=int(whole.sum()), answer_labels=int(answers[positions].sum()),
                        answer_labels_complete=int((answers[positions] & complete).sum()),
                        answer_labels_whole=int((answers[trained] & whole).sum()))
