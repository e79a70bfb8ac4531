"""Read conversations from parquet files, streaming by record batch (never a whole file in memory).

    DATA_DIR/**/*.parquet  (sorted)  ->  list[Conversation] per batch  (bad records -> RejectLedger)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from packsft.errors import InputError
from packsft.records import Conversation, RecordRejected, RejectLedger, validate_messages, validate_text

# The column each input format needs.
REQUIRED_COLUMN = {"conversation": "messages", "text": "text"}
SOURCE_COLUMN = "source"


def list_input_files(data_dir: str | Path) -> list[Path]:
    """Every *.parquet under data_dir, recursively, in sorted order (the order defines the output)."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise InputError(f"{data_dir}: no such folder. Pass the folder that holds your *.parquet files")
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: not a folder. Pass the folder that holds your *.parquet files")
    files = sorted(path for path in data_dir.rglob("*.parquet") if path.is_file())
    if not files:
        raise InputError(f"{data_dir}: no parquet files under it. Pass the folder that holds *.parquet")
    return files


@dataclass(frozen=True)
class InputFile:
    """An opened, schema-checked input file."""

    path: Path
    parquet: pq.ParquetFile
    column: str
    has_source: bool

    @property
    def num_rows(self) -> int:
        return self.parquet.metadata.num_rows


def open_input(path: Path, data_format: str) -> InputFile:
    """Open a parquet file and check it has the column `data_format` needs."""
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
    column = REQUIRED_COLUMN[data_format]
    if column not in names:
        other = "text" if data_format == "conversation" else "conversation"
        hint = f"; use --format {other}" if REQUIRED_COLUMN[other] in names else ""
        raise InputError(
            f"{path}: no {column!r} column for --format {data_format} (columns found: {', '.join(names) or 'none'}){hint}"
        )
    return InputFile(path, parquet, column, SOURCE_COLUMN in names)


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
    """Yield (valid conversations, records filtered out by --source-filter) per record batch.

    `row_groups` = [start, stop) reads only those row groups; row numbers stay those of the file.
    """
    name = display_name or str(source.path)
    columns = [source.column] + ([SOURCE_COLUMN] if source.has_source else [])
    validate = validate_messages if data_format == "conversation" else validate_text
    metadata = source.parquet.metadata
    start, stop = row_groups if row_groups is not None else (0, metadata.num_row_groups)
    row = sum(metadata.row_group(i).num_rows for i in range(start))
    try:
        for batch in source.parquet.iter_batches(batch_size=batch_size, columns=columns, row_groups=list(range(start, stop))):
            values = batch.column(source.column).to_pylist()
            sources = batch.column(SOURCE_COLUMN).to_pylist() if source.has_source else [None] * len(values)
            conversations, filtered = [], 0
            for raw, origin in zip(values, sources):
                if source_filter is not None and origin != source_filter:
                    filtered += 1
                else:
                    try:
                        conversations.append(Conversation(validate(raw), origin, name, row))
                    except RecordRejected as bad:
                        rejects.reject(name, row, bad.reason, raw)
                row += 1
            yield conversations, filtered
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{name}: failed while reading row {row} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
