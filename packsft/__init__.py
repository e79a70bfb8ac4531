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
"""

from packsft.config import PackConfig, resolve_config
from packsft.errors import PacksftError
from packsft.render.tokenizer import PackTokenizer, load_tokenizer
from packsft.run import merge, run_pack, status
from packsft.verify import verify_output
from packsft.version import __version__
from packsft.write.layout import FORMAT_VERSION, PackedOutput, read_dataset

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
