"""Stage 3, pack: a `RenderedBatch` -> pieces that fit a row -> rows of L+1 tokens -> `Chunks`. Pure: arrays in,
arrays out; no I/O, no tokenizer calls beyond re-encoding context headers.

    split.py         split_long: cut long conversations at message boundaries, each piece re-opened with its context
      pieces.py      the piece builder (spans, markers, rollback marks)
      context.py     the context planner (which messages re-open a piece)
      cuts.py        the cut chooser (where a piece closes; the filler pool)
      spans.py       where one conversation's messages lie
      labels.py      label accounting: prompt starts, message starts, answers, prefix sums
      table.py       PieceTable and SplitCounts, what split_long returns
    bins.py          pack_bestfit, pack_aligned: assign pieces to rows
    segment_tree.py  the best-fit index of bins.py
    rows.py          build_chunks, build_linear_chunks: tokens, label-aligned loss mask, segment boundaries
"""
