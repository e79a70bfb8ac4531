"""`--to olmo-core`: token and label-mask memmaps for OLMo-core's numpy FSL datasets (matched: ai2-olmo-core 3.0.0).

    DEST/part-00000.npy             raw token ids, no .npy header (OLMo-core reads them with np.memmap):
                                    every row's L+1 tokens back to back, padding included, uint16 when the
                                    vocabulary fits 65,536 ids else uint32 (packsft's own storage dtype)
    DEST/part-00000.label_mask.npy  raw bool, one per token: True where the token is a trained label
    DEST/part-00000.csv.gz          Dolma metadata: "start,end" token offsets of every conversation piece

`NumpyFSLDataset(*parts, sequence_length=L+1, label_mask_paths=masks, ...)` then yields instance i =
packsft row i with its `label_mask` (olmo_core.data.numpy_dataset, `_read_chunk_from_array`); OLMo-core
shifts labels itself, so the mask names the label token (`label_flags`). Document boundaries: OLMo-core
infers `doc_lens` from EOS tokens, which finds a piece only where it ends with EOS (a piece cut from a
longer conversation does not); the metadata file holds every piece exactly, and OLMo-core reads it with
`iter_document_indices(path, use_array_if_local=False)` (olmo_core.data.utils).

Under `--pad-multiple N` a document is a stored segment, its piece and its untrained pads, so every document length
(and the padding after a row's last one, N dividing L) is a multiple of N, as context parallelism needs of the
doc_lens OLMo-core builds cu_seqlens from; `--max-segments K` caps the documents of an instance at K. `loading`
says both.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np

from packsft.export.shards import ShardArrays
from packsft.export.target import Source, Target


def write_metadata(path: Path, starts: np.ndarray, ends: np.ndarray) -> Path:
    """Dolma's metadata: one "start,end" line per document; gzip with no name or time, so bytes repeat."""
    text = "".join(f"{start},{end}\n" for start, end in zip(starts.tolist(), ends.tolist()))
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(text.encode())
    path.write_bytes(buffer.getvalue())
    return path


def write_shard(shard: ShardArrays, dest: Path, source: Source) -> list[Path]:
    tokens_path = dest / f"part-{shard.name}.npy"
    mask_path = dest / f"part-{shard.name}.label_mask.npy"
    np.ascontiguousarray(shard.tokens).tofile(tokens_path)
    shard.label_flags().astype(np.bool_).tofile(mask_path)
    width = shard.tokens.shape[1]
    counts = np.diff(shard.row_segments)
    starts = np.repeat(np.arange(shard.rows, dtype=np.int64) * width, counts) + shard.piece_starts
    metadata = write_metadata(dest / f"part-{shard.name}.csv.gz", starts, starts + shard.segment_lengths)
    return [tokens_path, mask_path, metadata]


def loading(dest: Path, source: Source) -> dict[str, Any]:
    special = source.special_ids
    return {
        "paths": [f"{dest}/part-{name}.npy" for name in source.shards],
        "label_mask_paths": [f"{dest}/part-{name}.label_mask.npy" for name in source.shards],
        "sequence_length": source.seq_length + 1,
        "dtype": source.dtype,
        "vocab_size": source.vocab_size,
        "pad_token_id": special.get("pad"),
        "eos_token_id": special.get("eos"),
        "bos_token_id": special.get("bos"),
        "document_length_multiple": source.topology.pad_multiple,
        "max_documents_per_instance": source.topology.max_segments,
    }


TARGET = Target("olmo-core", "ai2-olmo-core", "3.0.0", write_shard, loading)
