"""`--to megatron`: Megatron-Bridge packed parquet and megatron-core indexed datasets, per shard.

    DEST/shard_00000.idx.parquet        Megatron-Bridge packed SFT (matched: GPTSFTPackedParquetDataset in
                                        megatron-bridge's data/datasets/packed_parquet.py and sft.py, 0.6;
                                        it needs Python 3.12, so tests read it as its collate does):
                                        input_ids list<int32>, seq_start_id list<int32>, loss_mask list<uint8>
    DEST/shard_00000.bin / .idx         megatron-core IndexedDataset (matched: megatron-core 0.16.1,
                                        datasets/indexed_dataset.py): one sequence per piece, one
                                        document per row
    DEST/shard_00000_loss_mask.bin/.idx the mask as a sidecar IndexedDataset with the same sequences (uint8)
    DEST/shard_00000.metadata.json      Bridge's pack metadata (pack_metadata_file_path, for pad_cu_seqlens):
                                        [{max_samples_per_bin, dataset_max_seqlen, min_packed_seqlen}]

Both Megatron formats put the flag on the INPUT token: loss_mask[i] = 1 when the prediction of
token i+1 from token i is trained (`input_flags`); packsft's stored mask is the same flag shifted to
the label. Bridge's collator cuts each piece to inputs [s, e-1) and labels [s+1, e), so the flag at a
piece's last token is never read; packsft never trains it (it would predict the next piece's BOS).
Trailing padding is not written: pieces only.

`--pad-multiple N` (context parallelism): a stored segment is its piece and its pads, N*k tokens. Bridge drops the
last token of every sequence from its inputs, so each Bridge sequence is the segment and one more pad (untrained),
as Bridge's own packing pre-pads (`pad_seq_to_mult`): its collate then yields N*k inputs per sequence and
cu_seqlens_padded at multiples of N. The pads count as tokens of their sequence in Bridge's logical cu_seqlens
(only trailing EOS pads are taken out there); they come after the piece, so no piece token attends to them, and
they are never trained. `--max-segments K`: max_samples_per_bin is K, so `pad_cu_seqlens` gives every row K+2
boundaries (0, K sequence ends, the row's end), whatever rows the shard holds.

The .idx layout (little endian): b"MMIDIDX\\x00\\x00", u64 version 1, u8 dtype code, u64 sequence
count, u64 document count + 1, int32 sequence lengths, int64 byte offsets of the sequences in .bin,
int64 document starts (sequence indices, from 0, ending at the sequence count).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from packsft.export.shards import ShardArrays, ragged, row_offsets
from packsft.export.target import Source, Target, write_table
from packsft.write.layout import Topology

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


def bridge_sequences(shard: ShardArrays, tokens: np.ndarray, flags: np.ndarray, topology: Topology,
                     pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, loss_mask, row offsets, seq_start_id) of Bridge's packed rows: the pieces, and under --pad-multiple
    each segment followed by one pad, so that Bridge's inputs (a sequence less its last token) are the segment."""
    if topology.pad_multiple == 1:
        return tokens, flags, row_offsets(shard.used), shard.piece_starts
    ends = shard.piece_ends[1:]  # segments lie back to back in the non-pad tokens
    within = np.arange(len(shard.segment_lengths)) - np.repeat(shard.row_segments[:-1], np.diff(shard.row_segments))
    return (np.insert(tokens, ends, pad_id), np.insert(flags, ends, 0),
            row_offsets(shard.used + np.diff(shard.row_segments)), shard.piece_starts + within)


def pack_metadata(shard: ShardArrays, topology: Topology) -> list[dict[str, int]]:
    """Bridge's pack metadata: the most sequences a row holds (K under --max-segments), the longest sequence's
    inputs and the fewest inputs a row holds."""
    lost = 0 if topology.pad_multiple > 1 else 1  # Bridge's inputs of a sequence: all but its last token
    counts = np.diff(shard.row_segments)
    most = topology.max_segments if topology.max_segments is not None else int(counts.max(initial=0))
    inputs = shard.used - lost * counts
    return [{"max_samples_per_bin": most,
             "dataset_max_seqlen": int(shard.segment_lengths.max(initial=0)) - lost,
             "min_packed_seqlen": int(inputs.min(initial=0))}]


def write_shard(shard: ShardArrays, dest: Path, source: Source) -> list[Path]:
    tokens = shard.nonpad(np.asarray(shard.tokens))
    flags = shard.nonpad(shard.input_flags())
    pad_id = source.special_ids.get("pad") or 0
    input_ids, mask, offsets, starts = bridge_sequences(shard, tokens, flags, source.topology, pad_id)
    where = f"shard {shard.name}"
    bridge = write_table(dest / f"shard_{shard.name}.idx.parquet", {
        "input_ids": ragged(input_ids.astype(np.int32), offsets, where),
        "seq_start_id": ragged(starts.astype(np.int32), shard.row_segments, where),
        "loss_mask": ragged(mask, offsets, where),
    })
    metadata = dest / f"shard_{shard.name}.metadata.json"
    metadata.write_text(json.dumps(pack_metadata(shard, source.topology)) + "\n")
    lengths = np.asarray(shard.segment_lengths)
    prefix = dest / f"shard_{shard.name}"
    written = write_indexed(prefix, tokens.astype(token_dtype(source.vocab_size)), lengths, shard.row_segments)
    written += write_indexed(prefix.with_name(prefix.name + MASK_SUFFIX), flags, lengths, shard.row_segments)
    return [bridge, metadata, *written]


def loading(dest: Path, source: Source) -> dict[str, Any]:
    prefixes = [f"{dest}/shard_{name}" for name in source.shards]
    return {
        "bridge_packed_parquet": f"{dest}/shard_*.idx.parquet",
        "pack_metadata_file_paths": [f"{dest}/shard_{name}.metadata.json" for name in source.shards],
        "pad_seq_to_mult": source.topology.pad_multiple,
        "pad_cu_seqlens": source.topology.max_segments is not None,
        "indexed_dataset_prefixes": prefixes,
        "loss_mask_suffix": MASK_SUFFIX,
        "mask_alignment": "input (loss_mask[i] trains the prediction of token i+1)",
        "token_dtype": str(token_dtype(source.vocab_size)),
    }


TARGET = Target("megatron", "megatron-core", "0.16.1", write_shard, loading)
