"""packsft: pack chat conversations into fixed-length, loss-masked token chunks, offline, once.

The core stages sit at the top of the package, in the order data flows through them:

    reader -> records -> tokenizer -> render | chat_template -> split -> pack -> rows -> writer
    files     Conversation  ids of roles  (ids, flags)            pieces   rows    arrays   shards
                                                                                        |  layout.py
    run/ (plan, units, workers, merge, SLURM)   verify/   report/ (inspect, HTML)   loader/ (torch)

`layout.py` is the on-disk contract every reader and writer shares; `stats.py` turns the counters the
stages return into the figures `packsft stats` prints.
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
