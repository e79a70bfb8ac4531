"""`--to megatron`: Megatron-Bridge packed parquet and megatron-core indexed datasets, per shard.

    DEST/shard_00000.idx.parquet        Megatron-Bridge packed SFT (matched: GPTSFTPackedParquetDataset in
                                        megatron-bridge's data/datasets/packed_parquet.py and sft.py, 0.6;
                                        it needs Python 3.12, so tests read it as its collate does):
                                        input_ids list<int32>, seq_start_id list<int32>, loss_mask list<uint8>
    DEST/shard_00000.bin / .idx         megatron-core IndexedDataset (matched: megatron-core 0.16.1,
                                        datasets/indexed_dataset.py): one sequence per piece, one
                                        document per row
    DEST/shard_00000_loss_mask.bin/.idx the mask as a sidecar IndexedDataset with the same sequences (uint8)

Both Megatron formats put the flag on the INPUT token: loss_mask[i] = 1 when the prediction of
token i+1 from token i is trained (`input_flags`); packsft's stored mask is the same flag shifted to
the label. Bridge's collator cuts each piece to inputs [s, e-1) and labels [s+1, e), so the flag at a
piece's last token is never read; packsft never trains it (it would predict the next piece's BOS).
Trailing padding is not written: pieces only.

The .idx layout (little endian): b"MMIDIDX\\x00\\x00", u64 version 1, u8 dtype code, u64 sequence
count, u64 document count + 1, int32 sequence lengths, int64 byte offsets of the sequences in .bin,
int64 document starts (sequence indices, from 0, ending at the sequence count).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from packsft.export.shards import ShardArrays, ragged, row_offsets
from packsft.export.target import Source, Target, write_table

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int32): 4, np.dtype(np.uint16): 8}
MEGATRON_UINT16_VOCAB = 65500  # megatron-core's DType.optimal_dtype: uint16 below this, else int32
MASK_SUFFIX = "_loss_mask"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < MEGATRON_UINT16_VOCAB else np.dtype(np.int32)


def write_indexed(prefix: Path, values: np.ndarray, lengths: np.ndarray, document_starts: np.ndarray) -> list[Path]:
    """Write `prefix`.bin (the values) and `prefix`.idx (sequence lengths, offsets, documents)."""
    bin_path, idx_path = prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")
    values.tofile(bin_path)
    pointers = row_offsets(lengths)[:-1] * values.dtype.itemsize
    with open(idx_path, "wb") as handle:
        handle.write(INDEX_HEADER)
        handle.write(struct.pack("<Q", INDEX_VERSION))
        handle.write(struct.pack("<B", DTYPE_CODES[values.dtype]))
        handle.write(struct.pack("<Q", len(lengths)))
        handle.write(struct.pack("<Q", len(document_starts)))
        handle.write(lengths.astype("<i4").tobytes())
        handle.write(pointers.astype("<i8").tobytes())
        handle.write(document_starts.astype("<i8").tobytes())
    return [bin_path, idx_path]


def write_shard(shard: ShardArrays, dest: Path, source: Source) -> list[Path]:
    tokens = shard.nonpad(np.asarray(shard.tokens))
    flags = shard.nonpad(shard.input_flags())
    offsets, where = row_offsets(shard.used), f"shard {shard.name}"
    bridge = write_table(dest / f"shard_{shard.name}.idx.parquet", {
        "input_ids": ragged(tokens.astype(np.int32), offsets, where),
        "seq_start_id": ragged(shard.piece_starts.astype(np.int32), shard.row_segments, where),
        "loss_mask": ragged(flags, offsets, where),
    })
    lengths = np.asarray(shard.segment_lengths)
    prefix = dest / f"shard_{shard.name}"
    written = write_indexed(prefix, tokens.astype(token_dtype(source.vocab_size)), lengths, shard.row_segments)
    written += write_indexed(prefix.with_name(prefix.name + MASK_SUFFIX), flags, lengths, shard.row_segments)
    return [bridge, *written]


def loading(dest: Path, source: Source) -> dict[str, Any]:
    prefixes = [f"{dest}/shard_{name}" for name in source.shards]
    return {
        "bridge_packed_parquet": f"{dest}/shard_*.idx.parquet",
        "indexed_dataset_prefixes": prefixes,
        "loss_mask_suffix": MASK_SUFFIX,
        "mask_alignment": "input (loss_mask[i] trains the prediction of token i+1)",
        "token_dtype": str(token_dtype(source.vocab_size)),
    }


TARGET = Target("megatron", "megatron-core", "0.16.1", write_shard, loading)
