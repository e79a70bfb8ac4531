"""Stage 4, write: `Chunks` -> shard folders and dataset.json, atomically, in the on-disk layout.

    layout.py  the on-disk contract (names, dtypes, shapes, reading it back), shared by every reader
    writer.py  write_shard, write_dataset: temporary names renamed into place
"""
