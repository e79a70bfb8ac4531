"""One shard of a packed output as the arrays every export writes from, and the two mask alignments.

packsft stores a row as L+1 tokens and a mask over its L labels; trainers disagree on where the flag
of a prediction sits, so each export picks one of two per-token alignments (a row of 6 tokens, L=5):

    tokens        BOS  u1   A    a1   a2   EOS
    loss_mask          0    0    1    1    1      (packsft: mask[i] = train flag of tokens[i+1])
    label_flags   0    0    0    1    1    1      token i is a trained label (TRL labels, OLMo-core)
    input_flags   0    0    1    1    1    0      the prediction made AT token i is trained (Megatron)

Pieces are the stored conversation pieces (`segment_lengths` + `row_segments`); the padding after a
row's last piece is not a piece. Everything is vectorised over the shard: a shard is the unit of memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from packsft.errors import OutputError
from packsft.write.layout import PackedOutput

LIST_LIMIT = (1 << 31) - 1  # arrow list<...> offsets are int32


@dataclass(frozen=True)
class ShardArrays:
    """The stored arrays of one shard (memory-mapped until an export touches them)."""

    index: int
    name: str
    tokens: np.ndarray  # (rows, L+1), stored dtype
    loss_mask: np.ndarray  # (rows, L) uint8
    segment_lengths: np.ndarray  # int32, pieces row after row
    row_segments: np.ndarray  # (rows+1,) int64

    @property
    def rows(self) -> int:
        return len(self.tokens)

    @cached_property
    def piece_ends(self) -> np.ndarray:
        """Cumulative piece lengths over the shard, with a leading 0 (int64)."""
        return np.concatenate([[0], np.cumsum(self.segment_lengths, dtype=np.int64)])

    @cached_property
    def used(self) -> np.ndarray:
        """Non-pad tokens per row: the sum of the row's piece lengths (int64)."""
        return self.piece_ends[self.row_segments[1:]] - self.piece_ends[self.row_segments[:-1]]

    @cached_property
    def piece_starts(self) -> np.ndarray:
        """Start of every piece within its own row (int64, one per piece)."""
        counts = np.diff(self.row_segments)
        row_base = np.repeat(self.piece_ends[self.row_segments[:-1]], counts)
        return self.piece_ends[:-1] - row_base

    def label_flags(self) -> np.ndarray:
        """(rows, L+1) uint8: 1 where token i is a trained label (nothing predicts token 0 of a row)."""
        flags = np.zeros(self.tokens.shape, np.uint8)
        flags[:, 1:] = self.loss_mask
        return flags

    def input_flags(self) -> np.ndarray:
        """(rows, L+1) uint8: 1 where the prediction made at token i (of token i+1) is trained."""
        flags = np.zeros(self.tokens.shape, np.uint8)
        flags[:, :-1] = self.loss_mask
        return flags

    def nonpad(self, matrix: np.ndarray) -> np.ndarray:
        """The first `used[r]` values of every row of a (rows, L+1) matrix, concatenated."""
        keep = np.arange(matrix.shape[1]) < self.used[:, None]
        return matrix[keep]


def read_shards(output: PackedOutput):
    """Yield every shard of an output in order, as memory maps (one shard is read at a time)."""
    for index, name in enumerate(output.shards):
        arrays = {key: output.array(index, key) for key in ("tokens", "loss_mask", "segment_lengths", "row_segments")}
        yield ShardArrays(index, name, **arrays)


def ragged(values: np.ndarray, offsets: np.ndarray, where: str) -> pa.ListArray:
    """An arrow list column from flat values and (rows+1) offsets."""
    if int(offsets[-1]) > LIST_LIMIT:
        raise OutputError(f"{where}: {int(offsets[-1])} values exceed one parquet list column (2^31); "
                          "pack with smaller units (--unit-mib) and export again")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def row_offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
