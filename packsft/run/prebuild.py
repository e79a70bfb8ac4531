"""Imported by the fork server as it starts (run/fork_server.py PRELOAD): builds the gigatoken tokenizer the pack will
likely encode with, so that every worker forked from the server has it instead of building its own.

    fork server: imports, then gigatoken from the rank file the last pack of this --tokenizer used (qwen3: 0.25 s)
        |-- worker 1 (forked): its first build takes that tokenizer   (render/encoder.py rank_tokenizer)
        `-- worker 2 (forked): the same, its own copy

The tokenizer is named by FORK_SERVER_TOKENIZER in the server's environment (`fork_server.start_early` sets it); which
cache entry it encodes with was noted by the last pack (render/tokenizer.py `remember_fast`). A wrong guess (no note,
a changed tokenizer) costs the server's build, never an output: a worker takes only a tokenizer built from the very
file, scheme and added tokens it would build from. Nothing here may stop the server: errors leave nothing built.
"""

from __future__ import annotations

import contextlib
import os

from packsft.render.tokenizer import prebuild_fast
from packsft.run.fork_server import FORK_SERVER_TOKENIZER

if location := os.environ.pop(FORK_SERVER_TOKENIZER, None):
    with contextlib.suppress(Exception):
        prebuild_fast(location)
