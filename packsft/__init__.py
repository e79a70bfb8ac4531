"""packsft: pack chat conversations into fixed-length, loss-masked token chunks, offline, once.

The stages are subpackages, in the order data flows through them; `stages.py` composes them for one unit:

    files --read/--> Conversation --render/--> RenderedBatch --pack/--> Chunks --write/--> shards
                     records, rejects          ids, train flags,        rows, masks,       dataset.json
                                               message spans            segments
    |<------------------- stages.py: one unit, in memory ------------------->|

    around them: run/ (plan, units, workers, merge, SLURM, Ray)   verify/   report/ (inspect, HTML)
                 loader/ (torch)   export/ (trainer formats)

`write/layout.py` is the on-disk contract every reader and writer shares; `stats.py` turns the counters
the stages return into the figures `packsft stats` prints.

The names below load on first use (PEP 562), so that `packsft pack` can start its workers' fork server before it
imports the stages (run/fork_server.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from packsft.version import __version__

if TYPE_CHECKING:
    from packsft.config import PackConfig, resolve_config
    from packsft.errors import PacksftError
    from packsft.render.tokenizer import PackTokenizer, load_tokenizer
    from packsft.run import merge, run_pack, status
    from packsft.verify import verify_output
    from packsft.write.layout import FORMAT_VERSION, PackedOutput, read_dataset

# Each public name and the module it comes from.
_SOURCES = {
    "FORMAT_VERSION": "packsft.write.layout", "PackConfig": "packsft.config", "PackTokenizer": "packsft.render.tokenizer",
    "PackedOutput": "packsft.write.layout", "PacksftError": "packsft.errors", "load_tokenizer": "packsft.render.tokenizer",
    "merge": "packsft.run", "read_dataset": "packsft.write.layout", "resolve_config": "packsft.config",
    "run_pack": "packsft.run", "status": "packsft.run", "verify_output": "packsft.verify",
}

__all__ = [
    "FORMAT_VERSION",
    "PackConfig",
    "PackTokenizer",
    "PackedOutput",
    "PacksftError",
    "__version__",
    "load_tokenizer",
    "merge",
    "read_dataset",
    "resolve_config",
    "run_pack",
    "status",
    "verify_output",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'packsft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value
