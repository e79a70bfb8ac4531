"""Stage 3, pack: a `RenderedBatch` -> pieces that fit a row -> rows of L+1 tokens -> `Chunks`. Pure: arrays in,
arrays out; no I/O, no tokenizer calls beyond re-encoding context headers.

    split.py  split_long: cut long conversations at message boundaries, each piece re-opened with its context
    bins.py   pack_bestfit, pack_aligned: assign pieces to rows
    rows.py   build_chunks, build_linear_chunks: tokens, label-aligned loss mask, segment boundaries
"""
