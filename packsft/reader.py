"""Read records from parquet and JSON Lines files, streaming (never a whole file in memory).

    input file (inputs.py lists them: folders, globs, URLs) -> list[Conversation] per batch (bad records -> RejectLedger)

Input formats (`--input-format`), one record each:

    smoltalk  parquet (or JSONL)  messages:      [{role, content}, ...]   (+ source)
    openai    JSON Lines (or pq)  messages:      [{role, content}, ...]   (the chat API shape)
    sharegpt  either              conversations: [{from, value}, ...]     (human/gpt/system, aliases)
    text      either              text:          "a document"

`auto` decides per file from the parquet columns, or from the keys of the first JSON Lines record
(`messages` -> smoltalk for parquet, openai for JSON Lines; `conversations` -> sharegpt; `text` ->
text), and says what it chose. A conversation field held as a string (a parquet string column, or a
string under the JSON Lines key) is JSON text, as many datasets store it: `'[{"role": "user", ...}]'`.
It is decoded per record (text that is not JSON is a rejected record) and packs exactly as the same
conversations stored as structs. `--format text` limits auto to `text`; `--format conversation` (the
default) to the three conversation shapes. Rows are 0-based: a parquet row, or a JSON Lines line
index (blank lines are skipped but keep their number, so row r is line r+1).
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from packsft.errors import InputError
from packsft.inputs import Location, file_info, location_name, open_binary
from packsft.records import (
    ROLE_ALIASES,
    Conversation,
    RecordRejected,
    RejectLedger,
    validate_messages,
    validate_text,
)

# The field each input format reads, and the keys of one message in it.
FIELD = {"smoltalk": "messages", "openai": "messages", "sharegpt": "conversations", "text": "text"}
MESSAGE_KEYS = {"smoltalk": ("role", "content"), "openai": ("role", "content"), "sharegpt": ("from", "value")}
SOURCE_COLUMN = "source"


@dataclass
class InputFile:
    """An opened, schema-checked input file and the input format chosen for it."""

    path: Location
    input_format: str  # smoltalk | sharegpt | openai | text
    detected: str | None  # why auto chose it ("'messages' column"), None when given explicitly
    parquet: pq.ParquetFile | None = None
    has_source: bool = False
    rows_read: int = 0  # JSON Lines row count is only known once read
    role_aliases: Mapping[str, str] = field(default_factory=lambda: ROLE_ALIASES)
    json_text: bool = False  # the conversations are JSON text in a string column/key, parsed per record

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
        json_text = chosen != "text" and (pa.types.is_string(column_type) or pa.types.is_large_string(column_type))
        return InputFile(path, chosen, _json_why(why, json_text), parquet, SOURCE_COLUMN in schema.names,
                         role_aliases=role_aliases, json_text=json_text)
    first = _first_record(path)
    if not isinstance(first, dict):
        raise InputError(f"{path}: the first record is not a JSON object (got {type(first).__name__}); "
                         "JSON Lines input holds one object per line")
    chosen, why = _choose(path, list(first), "key", data_format, input_format, jsonl=True)
    json_text = chosen != "text" and isinstance(first[FIELD[chosen]], str)
    return InputFile(path, chosen, _json_why(why, json_text), role_aliases=role_aliases, json_text=json_text)


def _json_why(why: str | None, json_text: bool) -> str | None:
    return f"{why} of JSON text" if why and json_text else why


def _choose(path: Location, names: list[str], kind: str, data_format: str, input_format: str, *, jsonl: bool):
    found = f"({kind}s found: {', '.join(names) or 'none'})"
    if input_format != "auto":
        if FIELD[input_format] not in names:
            raise InputError(f"{path}: no {FIELD[input_format]!r} {kind} for --input-format {input_format} {found}")
        return input_format, None
    if data_format == "text":
        if "text" not in names:
            hint = "; use --format conversation" if {"messages", "conversations"} & set(names) else ""
            raise InputError(f"{path}: no 'text' {kind} for --format text {found}{hint}")
        return "text", f"'text' {kind}"
    if "messages" in names:
        return ("openai" if jsonl else "smoltalk"), f"'messages' {kind}"
    if "conversations" in names:
        return "sharegpt", f"'conversations' {kind}"
    hint = "; use --format text" if "text" in names else ""
    raise InputError(f"{path}: no 'messages' or 'conversations' {kind} for --format conversation {found}{hint}")


def _open_text(path: Location) -> IO[str]:
    if isinstance(path, str):  # a URL
        binary = open_binary(path)
        return gzip.open(binary, "rt", encoding="utf-8") if path.endswith(".gz") else io.TextIOWrapper(binary, "utf-8")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


# What a broken JSON Lines file raises while being read: bad gzip, truncated gzip, bad UTF-8.
_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


def _json_lines(path: Location) -> Iterator[tuple[int, Any]]:
    """(row, decoded record) for every non-blank line; an undecodable line is an error naming the file."""
    row = 0
    try:
        with _open_text(path) as handle:
            for row, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    yield row, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}: line {row + 1} is not valid JSON ({exc.msg})") from None
    except _READ_ERRORS as exc:
        what = "gzip file" if location_name(path).endswith(".gz") else "UTF-8 text file"
        raise InputError(f"{path}: not a readable {what}, failed near line {row + 1} ({_first_line(exc)})") from None


def _first_record(path: Location) -> Any:
    for _, record in _json_lines(path):
        return record
    raise InputError(f"{path}: no records (only blank lines)")


def _validator(source: InputFile):
    if source.input_format == "text":
        return validate_text
    role_key, content_key = MESSAGE_KEYS[source.input_format]

    def validate(raw: Any) -> tuple[tuple[str, str], ...]:
        return validate_messages(raw, source.role_aliases, field=source.column, role_key=role_key,
                                 content_key=content_key)

    return validate


def read_conversations(
    source: InputFile,
    data_format: str,
    rejects: RejectLedger,
    *,
    source_filter: str | None = None,
    batch_size: int = 1024,
    display_name: str | None = None,
    row_groups: tuple[int, int] | None = None,
) -> Iterator[tuple[list[Conversation], int]]:
    """Yield (valid conversations, records filtered out by --source-filter) per batch of records.

    `row_groups` = [start, stop) reads only those parquet row groups; row numbers stay those of the file.
    """
    name = display_name or str(source.path)
    validate = _validator(source)
    batch: list[Conversation] = []
    filtered = 0
    for row, value, origin in _raw_records(source, name, batch_size, row_groups):
        source.rows_read = row + 1
        if source_filter is not None and origin != source_filter:
            filtered += 1
        else:
            try:
                if isinstance(value, _BadRecord):
                    raise RecordRejected(value.reason)
                batch.append(Conversation(validate(value), origin, name, row))
            except RecordRejected as bad:
                rejects.reject(name, row, bad.reason, value.record if isinstance(value, _BadRecord) else value)
        if len(batch) + filtered >= batch_size:
            yield batch, filtered
            batch, filtered = [], 0
    if batch or filtered:
        yield batch, filtered


@dataclass(frozen=True)
class _BadRecord:
    """A JSON Lines record that has no usable field at all (the reason says why)."""

    reason: str
    record: Any


def _raw_records(
    source: InputFile, name: str, batch_size: int, row_groups: tuple[int, int] | None = None
) -> Iterator[tuple[int, Any, Any]]:
    """(row, field value, source value) of every record, parquet or JSON Lines."""
    column = source.column
    if source.parquet is not None:
        columns = [column] + ([SOURCE_COLUMN] if source.has_source else [])
        metadata = source.parquet.metadata
        start, stop = row_groups if row_groups is not None else (0, metadata.num_row_groups)
        row = sum(metadata.row_group(i).num_rows for i in range(start))
        groups = list(range(start, stop))
        try:
            for batch in source.parquet.iter_batches(batch_size=batch_size, columns=columns, row_groups=groups):
                values = batch.column(column).to_pylist()
                if source.json_text:
                    values = [_parse_json_text(value, column) for value in values]
                origins = batch.column(SOURCE_COLUMN).to_pylist() if source.has_source else [None] * len(values)
                for value, origin in zip(values, origins):
                    yield row, value, origin
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{name}: failed while reading row {row} ({_first_line(exc)})") from None
        return
    if row_groups is not None:
        raise InputError(f"{name}: JSON Lines files have no row groups; they are read whole")
    for row, record in _json_lines(source.path):
        if not isinstance(record, dict):
            yield row, _BadRecord(f"record is not a JSON object (got {type(record).__name__})", record), None
        elif column not in record:
            yield row, _BadRecord(f"record has no {column!r} field", record), None
        else:
            origin = record.get(SOURCE_COLUMN)
            value = _parse_json_text(record[column], column) if source.json_text else record[column]
            yield row, value, origin if isinstance(origin, str) else None


def _parse_json_text(value: Any, column: str) -> Any:
    """A conversation stored as JSON text, decoded; text that is not JSON becomes a rejected record."""
    if not isinstance(value, str):
        return value  # null, or already structured: validation says what is wrong with it
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        return _BadRecord(f"{column} is not valid JSON (got {exc.msg} at character {exc.pos})", value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
