"""JSON input files, streamed: JSON Lines (`*.jsonl[.gz]`, and `*.json[.gz]` holding one record per line) and files
holding one JSON array of records (`*.json[.gz]`, the raw shape of ShareGPT and LLaMA-Factory data), decoded element
by element from a bounded buffer, never loaded whole.

A row is a line index (blank lines are skipped but keep their number) or an element's index in the array.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from packsft.errors import InputError
from packsft.read.inputs import JSON_SUFFIXES, Location, location_name, open_binary
from packsft.read.records import json_problem


def _open_text(path: Location) -> IO[str]:
    # utf-8-sig: a byte-order mark (Windows tools write one) is skipped, and is no part of the first record.
    if isinstance(path, str):  # a URL
        binary = open_binary(path)
        return gzip.open(binary, "rt", encoding="utf-8-sig") if path.endswith(".gz") else io.TextIOWrapper(binary, "utf-8-sig")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


# What a broken JSON file raises while being read: bad gzip, truncated gzip, bad UTF-8.
_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


@dataclass(frozen=True)
class BadLine:
    """A JSON Lines line that is not valid JSON: one bad record (the reader rejects it), not a bad file."""

    reason: str
    text: str


def json_records(path: Location) -> Iterator[tuple[int, Any]]:
    """(row, decoded record) of every record of a JSON file: one per non-blank line, or the elements of one
    top-level array (`*.json`). A line that is not valid JSON comes as a `BadLine`; an array element that is
    not (nothing after it can be read) and an undecodable file are errors naming the file."""
    row, where = 0, "line"
    try:
        with _open_text(path) as handle:
            if location_name(path).endswith(JSON_SUFFIXES) and _starts_array(handle):
                where = "element"
                for row, record in _ArrayReader(path, handle).elements():
                    yield row, record
                return
            for row, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    record = BadLine(f"line is not valid JSON (got {json_problem(exc, 0)})", line.rstrip("\n"))
                yield row, record
    except _READ_ERRORS as exc:
        what = "gzip file" if location_name(path).endswith(".gz") else "UTF-8 text file"
        at = f"line {row + 1}" if where == "line" else f"element {row} of its JSON array"
        raise InputError(f"{path}: not a readable {what}, failed near {at} ({_first_line(exc)})") from None


JSON_CHUNK_CHARS = 1 << 20  # a JSON array is read this much at a time, never whole
_JSON = json.JSONDecoder()
_SPACE = " \t\n\r"
# A decode error this close to the end of the buffer may only mean the element goes on in the next chunk.
_TAIL_CHARS = 8


def _starts_array(handle: IO[str]) -> bool:
    """Whether the file's first non-blank character opens an array (the handle is rewound)."""
    while True:
        chunk = handle.read(4096)
        stripped = chunk.lstrip(_SPACE)
        if stripped or not chunk:
            handle.seek(0)
            return stripped[:1] == "["


class _ArrayReader:
    """The elements of a file holding one JSON array, decoded one by one from a buffer of about
    JSON_CHUNK_CHARS (plus the element being decoded): a file of any size streams."""

    def __init__(self, path: Location, handle: IO[str]) -> None:
        self.path, self.handle = path, handle
        self.buffer, self.pos, self.done = "", 0, False

    def _refill(self) -> None:
        # At least as much as is still unread, so an element far longer than a chunk is read (and retried) in
        # doubling reads: linear in its size, not quadratic.
        more = self.handle.read(max(JSON_CHUNK_CHARS, len(self.buffer) - self.pos))
        self.buffer, self.pos, self.done = self.buffer[self.pos:] + more, 0, not more

    def _next_char(self) -> str:
        """The next non-blank character (not consumed); "" at the end of the file."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in _SPACE:
                self.pos += 1
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if self.done:
                return ""
            self._refill()

    def elements(self) -> Iterator[tuple[int, Any]]:
        self._next_char()
        self.pos += 1  # the "[" that _starts_array saw
        if self._next_char() == "]":
            self._end()
            return
        index = 0
        while True:
            yield index, self._decode(index)
            char = self._next_char()
            if char == "]":
                self._end()
                return
            if char != ",":
                what = "the file ends" if not char else f"{char!r} follows"
                raise InputError(f"{self.path}: {what} after element {index} of the JSON array, where ',' or ']' "
                                 "belongs (the file may be cut off)")
            self.pos += 1
            if self._next_char() == "]":
                raise InputError(f"{self.path}: a ',' after element {index} of the JSON array, before its closing ']' "
                                 "(JSON allows no trailing comma)")
            index += 1

    def _end(self) -> None:
        """After the closing "]": nothing but blanks (a second array or a stray record would be lost)."""
        self.pos += 1
        char = self._next_char()
        if char:
            raise InputError(f"{self.path}: {char!r} follows the JSON array's closing ']'; a *.json file holds one "
                             "array of records, or one record per line")

    def _decode(self, index: int) -> Any:
        while True:
            self._next_char()
            try:
                value, end = _JSON.raw_decode(self.buffer, self.pos)
                if end < len(self.buffer) or self.done:  # a value at the very end may continue in the next chunk
                    self.pos = end
                    return value
            except json.JSONDecodeError as exc:
                open_string = exc.msg.startswith("Unterminated string")
                if self.done and (open_string or exc.pos >= len(self.buffer.rstrip(_SPACE))):
                    raise InputError(f"{self.path}: the file ends inside element {index} of the JSON array (the file "
                                     "may be cut off)") from None
                # Before the end of the file, only an error at the end of the buffer (or in a string still open
                # there) may be an element that goes on in the next chunk.
                if self.done or not (open_string or exc.pos >= len(self.buffer) - _TAIL_CHARS):
                    raise InputError(f"{self.path}: element {index} of the JSON array is not valid JSON "
                                     f"({json_problem(exc, self.pos)} of the element)") from None
            self._refill()


def first_json_record(path: Location) -> Any:
    """The first record that is valid JSON (what the input format is detected from)."""
    bad = None
    for _, record in json_records(path):
        if not isinstance(record, BadLine):
            return record
        bad = bad or record
    if bad is not None:
        hint = "; a *.json file holds one record per line, or one JSON array of records" if (
            location_name(path).endswith(JSON_SUFFIXES)) else ""
        raise InputError(f"{path}: no line is valid JSON (the first: {bad.reason}){hint}")
    raise InputError(f"{path}: no records (only blank lines, or an empty JSON array)")




def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
