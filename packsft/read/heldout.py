"""The held-out split: which records go to the eval output, chosen by the content of each record.

A record's key is the first 8 bytes of the sha256 of its canonical JSON (keys sorted, no spaces, UTF-8), read as
an unsigned 64-bit integer: a record is an eval record when its key is below the split's threshold. The key
depends on the record alone, never on its file, row, order, machine or worker, so a rerun, another worker count
or a renamed or reordered file picks the same records, and identical records always land on the same side (a
duplicate never leaks from training into eval). `--eval-fraction f` is the threshold f * 2**64; `--eval-records
N` is the key of the N-th smallest record plus one (so N records, or more where duplicates share that key).
The record is hashed as read, before validation, so records the reader rejects are split too: each side
counts only its own rejects. The same conversation stored as parquet and as JSON Lines may hash differently
(parquet gives absent struct fields as null).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Side = Literal["train", "eval"]
SIDES: tuple[Side, ...] = ("train", "eval")
KEY_SPACE = 1 << 64


def record_digest(record: Any) -> bytes:
    """The sha256 of the record's canonical JSON: its first 8 bytes are the split's key, the next 8 the mix's."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def record_key(record: Any) -> int:
    """The record's 64-bit content key (see the module docstring)."""
    return int.from_bytes(record_digest(record)[:8], "big")


def fraction_threshold(fraction: float) -> int:
    """The threshold that sends `fraction` of the records (in expectation) to eval."""
    return int(fraction * KEY_SPACE)


def records_threshold(keys: Iterable[int], count: int) -> int:
    """The threshold that sends the `count` records with the smallest keys to eval (all of them, if fewer)."""
    smallest = heapq.nsmallest(count, keys)
    if len(smallest) < count:
        return KEY_SPACE
    return smallest[-1] + 1


@dataclass
class RecordSplit:
    """One side of the split, as the reader applies it; counts the records it leaves to the other side."""

    threshold: int
    side: Side
    elsewhere: int = 0  # records of the other side, left out here

    def keeps(self, record: Any) -> bool:
        mine = (record_key(record) < self.threshold) == (self.side == "eval")
        if not mine:
            self.elsewhere += 1
        return mine
