"""Export a packed output to the formats trainers read, from the stored arrays (never re-tokenizing).

    run.py        export_output: DEST checks, one shard at a time, export.json written last
    shards.py     a shard's arrays, piece offsets, and the two per-token mask alignments
    target.py     what a target provides; the shared parquet writer
    trl.py        TRL SFTTrainer, padding_free (input_ids, seq_lengths, labels)
    megatron.py   Megatron-Bridge packed parquet + megatron-core .bin/.idx with a mask sidecar
    olmo_core.py  OLMo-core numpy FSL memmaps, label masks, Dolma metadata
    hf.py         a `datasets` parquet dataset
"""

from packsft.export.run import EXPORT_JSON, TARGETS, ExportResult, export_output

__all__ = ["EXPORT_JSON", "TARGETS", "ExportResult", "export_output"]
