"""Small real packed outputs for the interop and model tests: the first ShareGPT records, packed at a short L.

A short L keeps tiny models fast while bestfit still puts several conversation pieces in most rows.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from packsft import PackConfig
from packsft.run import run_pack

SAMPLE_RECORDS = 160


def pack_sample(folder: Path, sharegpt_dir: Path, tokenizer_dir: Path, *, seq_length: int = 256,
                template: str = "roles", records: int = SAMPLE_RECORDS, **config: str) -> Path:
    """Pack the first `records` conversations of ShareGPT shard 0 into folder/out (two input files, two shards)."""
    table = pq.read_table(sharegpt_dir / "shard_00000.parquet").slice(0, records)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    half = records // 2
    pq.write_table(table.slice(0, half), data / "part_0.parquet")
    pq.write_table(table.slice(half), data / "part_1.parquet")
    out = folder / "out"
    run_pack(data, out, PackConfig(tokenizer=str(tokenizer_dir), seq_length=seq_length, template=template, **config),
             quiet=True, workers=1)
    return out
