"""`--to trl`: pre-packed rows for TRL's SFTTrainer with `padding_free=True` (matched: trl 1.16.0).

TRL's `DataCollatorForLanguageModeling` (trl/trainer/sft_trainer.py) reads three columns when dataset
preparation is skipped (`dataset_kwargs={"skip_prepare_dataset": True}`):

    input_ids    list<int32>  the row's tokens without trailing padding (at most L+1)
    seq_lengths  list<int32>  the row's conversation pieces; the collator restarts position_ids at each
    labels       list<int32>  input_ids where the token is a trained label, else -100

TRL (the model's loss) shifts labels itself, so `labels` are aligned with the token they name
(`label_flags`), not with packsft's mask. The collator also sets the label at every piece start to
-100; packsft never trains those, so nothing is lost. Rows keep all L+1 tokens (the last token is a
label only), so a model with learned positions needs at least L+1 of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packsft.export.shards import ShardArrays, ragged, row_offsets
from packsft.export.target import IGNORE_INDEX, Source, Target, write_table


def write_shard(shard: ShardArrays, dest: Path, source: Source) -> list[Path]:
    tokens = shard.nonpad(np.asarray(shard.tokens)).astype(np.int32)
    trained = shard.nonpad(shard.label_flags()).astype(bool)
    offsets = row_offsets(shard.used)
    where = f"shard {shard.name}"
    path = dest / f"train-{shard.name}.parquet"
    return [write_table(path, {
        "input_ids": ragged(tokens, offsets, where),
        "seq_lengths": ragged(shard.segment_lengths.astype(np.int32), shard.row_segments, where),
        "labels": ragged(np.where(trained, tokens, IGNORE_INDEX).astype(np.int32), offsets, where),
    })]


def loading(dest: Path, source: Source) -> dict[str, Any]:
    return {
        "data_files": f"{dest}/train-*.parquet",
        "sft_config": {"padding_free": True, "max_length": None, "dataset_kwargs": {"skip_prepare_dataset": True}},
        "max_position_needed": source.seq_length + 1,
    }


TARGET = Target("trl", "trl", "1.16.0", write_shard, loading)
