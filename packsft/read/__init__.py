"""Stage 1, read: input files -> validated `Conversation` records (bad records -> `RejectLedger`).

    inputs.py      DATA arguments (folders, globs, files, URLs) -> sorted input files, content digests
    reader.py      open_input, read_conversations: parquet / JSON Lines / JSON arrays, streamed in batches
    json_input.py  JSON Lines and JSON-array files decoded record by record from a bounded buffer
    shapes.py      one row of a known shape (messages, sharegpt, prompt_completion, alpaca, text) -> messages
    plain_records.py  plain {role, content} parquet records validated from their Arrow columns (no dict per message)
    records.py     Conversation, ChatExtras, validation, roles, RejectLedger
    heldout.py     the held-out split: a record's content key, the eval threshold, RecordSplit
    mix.py         mixing by tokens: --mix sources, their rates, the copies of each record (RecordMix)

The package imports nothing here, so that `packsft --help` (which reads `records` through the config)
starts without pyarrow.
"""
