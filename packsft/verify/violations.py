"""What the array checks of verify report, and how they walk a shard: `Violation`s, block by block.

Rows are read in blocks of BLOCK_ROWS, so memory stays bounded on memory-mapped shards of any size. One
systematic fault must not print a million lines: each kind of violation names its first rows and counts the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

BLOCK_ROWS = 4096
ROWS_REPORTED = 3  # per kind of violation


@dataclass(frozen=True)
class Violation:
    array: str  # the file that holds the offending values, e.g. LOSS_MASK_NPY
    row: int | None  # row within the shard, None for a whole-array fact
    message: str


def row_violations(array: str, bad_rows: np.ndarray, message: str) -> list[Violation]:
    """One violation per offending row (the first few), then one that counts the rest."""
    bad_rows = np.unique(bad_rows)
    out = [Violation(array, int(r), message) for r in bad_rows[:ROWS_REPORTED]]
    if len(bad_rows) > ROWS_REPORTED:
        out.append(Violation(array, None, f"{message}: {len(bad_rows) - ROWS_REPORTED} more rows like this"))
    return out


Block = tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # first row, tokens, loss_mask, segments, offsets


def blocks(tokens: np.ndarray, loss_mask: np.ndarray, segment_lengths: np.ndarray,
           row_segments: np.ndarray) -> Iterator[Block]:
    """The shard in blocks of BLOCK_ROWS rows, read into memory one at a time; a block's offsets start at 0.
    Offsets must already be valid (`invariants.check_offsets`)."""
    for begin in range(0, len(tokens), BLOCK_ROWS):
        end = min(begin + BLOCK_ROWS, len(tokens))
        lo, hi = int(row_segments[begin]), int(row_segments[end])
        yield (begin, np.asarray(tokens[begin:end]), np.asarray(loss_mask[begin:end]),
               np.asarray(segment_lengths[lo:hi]), np.asarray(row_segments[begin : end + 1]) - lo)


def in_blocks(check: Callable[..., list[Violation]], tokens: np.ndarray, loss_mask: np.ndarray,
              segment_lengths: np.ndarray, row_segments: np.ndarray) -> list[Violation]:
    """`check(tokens, loss_mask, segment_lengths, row_segments)` on each block; the rows of its violations
    are shard rows."""
    found = []
    for begin, block_tokens, block_mask, lengths, offsets in blocks(tokens, loss_mask, segment_lengths, row_segments):
        for v in check(block_tokens, block_mask, lengths, offsets):
            found.append(Violation(v.array, None if v.row is None else begin + v.row, v.message))
    return found
