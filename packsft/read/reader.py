"""Read records from parquet, JSON Lines and JSON array files, streaming (never a whole file in memory).

    input file (inputs.py lists them: folders, globs, URLs) -> list[Conversation] per batch (bad records -> RejectLedger)

Input formats (`--input-format`; shapes.py turns one record into a conversation):

    smoltalk           parquet (or JSON)  messages:      [{role, content, tool_calls?, ...}, ...]   (+ source, tools)
    openai             JSON (or parquet)  messages:      [{role, content, ...}, ...]   (the chat API shape)
    sharegpt           either             conversations: [{from, value}, ...]     (human/gpt/system/function_call/observation)
    prompt_completion  either             prompt, completion (messages or text; TRL)
    alpaca             either             instruction, input, output (+ system, history)
    text               either             text:          "a document"

`auto` decides per file from the parquet columns, or from the keys of the first JSON record
(`messages` -> smoltalk for parquet, openai for JSON; `conversations` -> sharegpt; `prompt` and
`completion` -> prompt_completion; `instruction` and `output` -> alpaca; `text` -> text), and says what
it chose. A conversation field held as a string (a parquet string column, or a string under the JSON
key) is JSON text, as many datasets store it: `'[{"role": "user", ...}]'`. It is decoded per record
(text that is not JSON is a rejected record) and packs exactly as the same conversations stored as
structs. `--format text` limits auto to `text`; `--format conversation` (the default) to the
conversation shapes. JSON input is JSON Lines (`*.jsonl[.gz]`, one object per line) or, in `*.json[.gz]`,
either that or one JSON array of objects (the raw shape of ShareGPT and LLaMA-Factory data), streamed
object by object. Rows are 0-based: a parquet row, a JSON Lines line index (blank lines are skipped but
keep their number, so row r is line r+1), or the index of an object in a JSON array.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from packsft.errors import InputError
from packsft.read.heldout import RecordSplit, record_key
from packsft.read.inputs import JSON_SUFFIXES, Location, file_info, location_name, open_binary
from packsft.read.json_input import BadLine, first_json_record, json_records
from packsft.read.mix import RecordMix
from packsft.read.plain_records import MESSAGES, PLAIN_SHAPES, Messages, plain_column, plain_messages
from packsft.read.records import ROLE_ALIASES, Conversation, RecordRejected, RejectLedger
from packsft.read.shapes import OPTIONAL, REQUIRED, to_conversation

# The field each input format is detected by (and whose JSON text decides `json_text`).
FIELD = {shape: fields[0] for shape, fields in REQUIRED.items()}
SOURCE_COLUMN = "source"
# A batch of records also ends at this many characters of content, reasoning and tool-call arguments: records of long
# traces (100k+ characters each) are rendered a few at a time, not 1,024 at once (a 131k-token pack's peak RSS:
# +110 MiB for one batch; 0.5M characters: 384 MiB peak, no slower on ShareGPT).
BATCH_CHARS = 500_000
# What `auto` looks for, in order: the first shape whose fields a file has.
DETECT = {"messages": ("messages",), "sharegpt": ("conversations",), "prompt_completion": ("prompt", "completion"),
          "alpaca": ("instruction", "output")}
# For the error that names the missing half of a pair.
SHAPE_NAMES = {"prompt_completion": "prompt-completion", "alpaca": "Alpaca"}
MEANING = {"prompt": "prompts", "completion": "responses", "instruction": "instructions", "output": "responses"}


@dataclass
class InputFile:
    """An opened, schema-checked input file and the input format chosen for it."""

    path: Location
    input_format: str  # smoltalk | sharegpt | openai | prompt_completion | alpaca | text
    detected: str | None  # why auto chose it ("'messages' column"), None when given explicitly
    parquet: pq.ParquetFile | None = None
    has_source: bool = False
    rows_read: int = 0  # JSON Lines row count is only known once read
    role_aliases: Mapping[str, str] = field(default_factory=lambda: ROLE_ALIASES)
    json_text: bool = False  # the conversations are JSON text in a string column/key, parsed per record
    columns: tuple[str, ...] = ()  # parquet: the columns the shape reads that the file has

    @property
    def column(self) -> str:
        return FIELD[self.input_format]

    @property
    def num_rows(self) -> int | None:
        return self.parquet.metadata.num_rows if self.parquet is not None else None

    def describe(self) -> dict[str, Any]:
        """What the shard manifest records about this input's format."""
        described: dict[str, Any] = {"input_format": self.input_format, "detected": self.detected}
        if self.json_text:
            described["json_text"] = True
        return described


def open_input(
    path: Location, data_format: str = "conversation", input_format: str = "auto",
    role_aliases: Mapping[str, str] = ROLE_ALIASES,
) -> InputFile:
    """Open an input file (local, or a URL), choose its input format and check it has the field that format reads."""
    try:
        size = file_info(path)[0]
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if location_name(path).endswith(".parquet"):
        try:
            parquet = pq.ParquetFile(path if isinstance(path, Path) else open_binary(path))
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
        chosen, why = _choose(path, schema.names, "column", data_format, input_format, jsonl=False)
        column_type = schema.field(FIELD[chosen]).type
        json_text = chosen not in ("text", "prompt_completion", "alpaca") and (
            pa.types.is_string(column_type) or pa.types.is_large_string(column_type))
        columns = tuple(name for name in REQUIRED[chosen] + OPTIONAL[chosen] if name in schema.names)
        return InputFile(path, chosen, _json_why(why, json_text), parquet, SOURCE_COLUMN in schema.names,
                         role_aliases=role_aliases, json_text=json_text, columns=columns)
    first = first_json_record(path)
    if not isinstance(first, dict):
        holds = ("a *.json file holds one object per line, or one array of objects"
                 if location_name(path).endswith(JSON_SUFFIXES) else
                 "JSON Lines input holds one object per line (name a file that holds one array of records *.json)")
        raise InputError(f"{path}: the first record is not a JSON object (got {type(first).__name__}); {holds}")
    chosen, why = _choose(path, list(first), "key", data_format, input_format, jsonl=True)
    json_text = chosen not in ("text", "prompt_completion", "alpaca") and isinstance(first[FIELD[chosen]], str)
    return InputFile(path, chosen, _json_why(why, json_text), role_aliases=role_aliases, json_text=json_text)


def _json_why(why: str | None, json_text: bool) -> str | None:
    return f"{why} of JSON text" if why and json_text else why


def _choose(path: Location, names: list[str], kind: str, data_format: str, input_format: str, *, jsonl: bool):
    found = f"({kind}s found: {', '.join(names) or 'none'})"
    if input_format != "auto":
        missing = [name for name in REQUIRED[input_format] if name not in names]
        if missing:
            raise InputError(f"{path}: no {missing[0]!r} {kind} for --input-format {input_format} {found}")
        return input_format, None
    if data_format == "text":
        if "text" not in names:
            hint = "; use --input-format auto for conversations" if _detect(names) else ""
            raise InputError(f"{path}: no 'text' {kind} for --input-format text {found}{hint}")
        return "text", f"'text' {kind}"
    shape = _detect(names)
    if shape is not None:
        needed = DETECT[shape]
        if shape == "messages":
            shape = "openai" if jsonl else "smoltalk"
        return shape, " and ".join(f"'{name}'" for name in needed) + f" {kind}{'s' if len(needed) > 1 else ''}"
    for shape, needed in DETECT.items():
        have = [name for name in needed if name in names]
        if have:  # half of a pair: say which half is missing, and how to supply it
            lacking = next(name for name in needed if name not in names)
            raise InputError(f"{path}: {_a(have[0])} {kind} but no {lacking!r} {kind} {found}; {SHAPE_NAMES[shape]} "
                             f"records need both (rename the {kind} that holds the {MEANING[lacking]} to {lacking!r})")
    hint = "; for plain documents use --input-format text" if "text" in names else ""
    raise InputError(f"{path}: no conversation {kind} {found}; records need 'messages', "
                     f"'conversations', 'prompt' and 'completion', or 'instruction' and 'output'{hint}")


def _detect(names: list[str]) -> str | None:
    """The first conversation shape whose fields are all among `names`."""
    return next((shape for shape, needed in DETECT.items() if all(name in names for name in needed)), None)


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name!r}"


def read_conversations(
    source: InputFile,
    data_format: str,
    rejects: RejectLedger,
    *,
    source_filter: str | None = None,
    batch_size: int = 1024,
    display_name: str | None = None,
    row_groups: tuple[int, int] | None = None,
    split: RecordSplit | None = None,
    mix: RecordMix | None = None,
) -> Iterator[tuple[list[Conversation], int]]:
    """Yield (valid conversations, records filtered out by --source-filter) per batch of records.

    `row_groups` = [start, stop) reads only those parquet row groups; row numbers stay those of the file.
    `split` keeps only the records of its side of the held-out split (before validation: rejects are split too)
    and counts the others in `split.elsewhere`. `mix` gives each record its copies (`Conversation.copies`; also
    before validation) and leaves out those with none, counting them in `mix.records_left_out`.
    """
    name = display_name or str(source.path)
    structs = source.parquet is not None
    batch: list[Conversation] = []
    filtered = chars = 0
    # Records a split or a mix decides on are read as mappings: both read the record's fields.
    for row, value, origin in _raw_records(source, name, batch_size, row_groups, plain=split is None and mix is None):
        source.rows_read = row + 1
        if source_filter is not None and origin != source_filter:
            filtered += 1
        elif split is not None and not split.keeps(value.record if isinstance(value, _BadRecord) else value):
            continue
        elif not (count := mix.copies(value.record if isinstance(value, _BadRecord) else value) if mix else 1):
            continue
        else:
            try:
                if isinstance(value, _BadRecord):
                    raise RecordRejected(value.reason)
                if isinstance(value, PlainRecord):
                    messages, extras = value.messages, None
                else:
                    messages, extras = to_conversation(source.input_format, value, source.role_aliases,
                                                       structs=structs, json_text=source.json_text)
                # A record without a `source` is counted under its file's name (stats' per-source table), after
                # --source-filter, which matches only a `source` value.
                batch.append(Conversation(messages, origin if origin is not None else name, name, row, extras, count))
                chars += batch[-1].chars
            except RecordRejected as bad:
                rejects.reject(name, row, bad.reason, value.record if isinstance(value, _BadRecord) else value)
        if len(batch) + filtered >= batch_size or chars >= BATCH_CHARS:
            yield batch, filtered
            batch, filtered, chars = [], 0, 0
    if batch or filtered:
        yield batch, filtered


@dataclass(frozen=True)
class _BadRecord:
    """A JSON Lines record that has no usable field at all (the reason says why)."""

    reason: str
    record: Any


def _raw_records(
    source: InputFile, name: str, batch_size: int, row_groups: tuple[int, int] | None = None, *, plain: bool = False
) -> Iterator[tuple[int, Any, Any]]:
    """(row, record as a mapping of the fields its shape reads, source value) of every record, parquet or JSON.

    `plain`: a plain record of a parquet file whose shape reads only a {role, content} `messages` column may come
    as a PlainRecord, already validated (plain_records.py); the caller then needs no mapping of it."""
    if source.parquet is not None:
        parquet = source.parquet
        yield from _parquet_records(source, parquet, name, batch_size, row_groups,
                                    plain=plain and _reads_plain(source, parquet))
        return
    if row_groups is not None:
        raise InputError(f"{name}: JSON files have no row groups; they are read whole")
    for row, record in json_records(source.path):
        if isinstance(record, BadLine):
            yield row, _BadRecord(record.reason, record.text), None
            continue
        if not isinstance(record, dict):
            yield row, _BadRecord(f"record is not a JSON object (got {type(record).__name__})", record), None
            continue
        missing = [key for key in REQUIRED[source.input_format] if key not in record]
        if missing:
            yield row, _BadRecord(f"record has no {missing[0]!r} field", record), None
        else:
            origin = record.get(SOURCE_COLUMN)
            yield row, record, origin if isinstance(origin, str) else None


def _parquet_records(
    source: InputFile, parquet: pq.ParquetFile, name: str, batch_size: int, row_groups: tuple[int, int] | None, *,
    plain: bool
) -> Iterator[tuple[int, Any, Any]]:
    columns = list(source.columns) + ([SOURCE_COLUMN] if source.has_source else [])
    metadata = parquet.metadata
    start, stop = row_groups if row_groups is not None else (0, metadata.num_row_groups)
    row = sum(metadata.row_group(i).num_rows for i in range(start))
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns, row_groups=list(range(start, stop))):
            origins = batch.column(SOURCE_COLUMN).to_pylist() if source.has_source else [None] * batch.num_rows
            chats = plain_messages(batch.column(MESSAGES), source.role_aliases) if plain else None
            values = {column: batch.column(column).to_pylist() for column in source.columns} if chats is None else {}
            for i, origin in enumerate(origins):
                if chats is None:
                    yield row, {column: values[column][i] for column in source.columns}, origin
                elif (messages := chats[i]) is not None:
                    yield row, PlainRecord(messages), origin
                else:  # not plain: validated from its mapping, as any record
                    yield row, {column: batch.column(column)[i].as_py() for column in source.columns}, origin
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{name}: failed while reading row {row} ({_first_line(exc)})") from None


def _reads_plain(source: InputFile, parquet: pq.ParquetFile) -> bool:
    """Whether the file's shape reads nothing but a `messages` column that plain_records.py reads."""
    return (source.input_format in PLAIN_SHAPES and not source.json_text and source.columns == (MESSAGES,)
            and plain_column(parquet.schema_arrow.field(MESSAGES).type))


@dataclass(frozen=True)
class PlainRecord:
    """A record whose (role, content) messages are read and valid: a conversation without extras."""

    messages: Messages


def record_keys(source: InputFile, display_name: str | None = None,
                row_groups: tuple[int, int] | None = None, source_filter: str | None = None) -> Iterator[int]:
    """The held-out split's key of every record the reader would read (after --source-filter)."""
    name = display_name or str(source.path)
    for _, value, origin in _raw_records(source, name, 1024, row_groups):
        if source_filter is None or origin == source_filter:
            yield record_key(value.record if isinstance(value, _BadRecord) else value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
