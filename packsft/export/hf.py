"""`--to hf`: a Hugging Face `datasets` parquet dataset with packsft's own parquet columns (matched: datasets 5.2.0).

    DEST/data/train-00000-of-00008.parquet   one per shard, the columns of `--output-format parquet`:
        input_ids    list<uint16|uint32>  the row's L+1 tokens, padding included
        loss_mask    list<uint8>          L flags, loss_mask[i] = train flag of input_ids[i+1]
        seq_lengths  list<int32>          the pieces, then the trailing padding as one more length

`datasets.load_dataset("parquet", data_files="DEST/data/*.parquet", split="train")` reads it, and
so does `load_dataset("DEST")` (the `data/train-*` names are the hub's split convention). The file
layout is the writer's (packsft/write/writer.py `write_parquet`), so an output packed with
`--output-format parquet|both` already holds the same bytes per shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packsft.export.shards import ShardArrays
from packsft.export.target import Source, Target
from packsft.pack.rows import Chunks
from packsft.write.writer import write_parquet

DATA_DIR = "data"


def shard_file(index: int, total: int) -> str:
    return f"train-{index:05d}-of-{total:05d}.parquet"


def write_shard(shard: ShardArrays, dest: Path, source: Source) -> list[Path]:
    folder = dest / DATA_DIR
    folder.mkdir(exist_ok=True)
    tokens = np.asarray(shard.tokens)
    chunks = Chunks(tokens, np.asarray(shard.loss_mask), np.asarray(shard.segment_lengths),
                    np.asarray(shard.row_segments), np.zeros(0, np.int64))
    path = folder / shard_file(shard.index, len(source.shards))
    write_parquet(path, tokens, chunks)
    return [path]


def loading(dest: Path, source: Source) -> dict[str, Any]:
    return {"load_dataset": ["parquet"], "data_files": f"{dest}/{DATA_DIR}/*.parquet", "split": "train"}


TARGET = Target("hf", "datasets", "5.2.0", write_shard, loading)
