"""What every export target provides, and the small file writers they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from packsft.export.shards import ShardArrays
from packsft.write.layout import NO_TOPOLOGY, Topology

PARQUET_COMPRESSION = "zstd"
IGNORE_INDEX = -100  # the label value PyTorch's cross_entropy (and every HF trainer) skips


@dataclass(frozen=True)
class Source:
    """What a target needs to know about the packed output besides its arrays."""

    seq_length: int
    vocab_size: int
    dtype: str
    special_ids: dict[str, int | None]
    shards: tuple[str, ...]  # shard names, in order
    topology: Topology = NO_TOPOLOGY  # --pad-multiple and --max-segments of the pack


@dataclass(frozen=True)
class Target:
    """One export format: the trainer library whose reader it matches, and how to write one shard.

    `write_shard` returns the paths it wrote (relative names are recorded in the manifest);
    `loading` returns the facts a user needs to point the library at the files.
    """

    name: str
    library: str
    matched_version: str
    write_shard: Callable[[ShardArrays, Path, Source], list[Path]]
    loading: Callable[[Path, Source], dict[str, Any]]


def write_table(path: Path, columns: dict[str, pa.Array]) -> Path:
    """Write one parquet file; no timestamps go into parquet metadata, so equal inputs give equal bytes."""
    pq.write_table(pa.table(columns), path, compression=PARQUET_COMPRESSION)
    return path
