"""gigatoken's batch results as its flat ids and counts, without importing awkward where packsft owns the process.

gigatoken's `encode_batch` makes one flat id buffer and each text's count, then builds its result with
`awkward.unflatten(ids, counts)`; packsft only reads those two arrays back (`GigatokenEncoder.encode_texts_flat`).
Importing awkward for that costs 0.15 s of CPU a process: in a pooled pack, in the fork server before any worker
can start; on 2 cores, 8-15% of a GPT-2 pack of 4 ShareGPT shards.

`stand_in_for_awkward()` puts a stand-in module named awkward in `sys.modules` where awkward is not imported yet. Only
processes packsft owns call it (`packsft pack` and its local workers): not a Ray worker, which runs other tasks
after packsft's, nor a library user's process. The stand-in's

- `unflatten(ids, counts)` hands gigatoken's two arrays back as a FlatIds;
- `Array` is a class nothing is an instance of (gigatoken asks whether an input is an awkward Array where awkward
  is loaded);
- any other attribute imports the real awkward, which replaces the stand-in from then on.

`flat_ids` reads either kind of result, so ids never depend on which one gigatoken made.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

NAME = "awkward"


@dataclass(frozen=True)
class FlatIds:
    """What gigatoken's encode_batch made: every text's ids in one buffer, and each text's count."""

    ids: np.ndarray
    counts: np.ndarray


class _NoInstances:
    """The stand-in's `Array`: no input gigatoken is given is one."""


class _StandIn(types.ModuleType):
    unflatten = staticmethod(FlatIds)
    Array = _NoInstances

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_awkward(), name)


def stand_in_for_awkward() -> bool:
    """Put the stand-in in `sys.modules` where awkward is not imported; True where it is there now."""
    if NAME not in sys.modules:
        sys.modules[NAME] = _StandIn(NAME, __doc__)
    return isinstance(sys.modules[NAME], _StandIn)


def _real_awkward() -> types.ModuleType:
    if isinstance(sys.modules.get(NAME), _StandIn):
        del sys.modules[NAME]
    return importlib.import_module(NAME)


def flat_ids(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) of an encode_batch result: a FlatIds, or an awkward Array (one list of ids per text)."""
    if isinstance(result, FlatIds):
        return result.ids, np.asarray(result.counts, np.int64)
    layout = result.layout
    offsets = np.asarray(layout.offsets.data, np.int64)
    return np.asarray(layout.content.data)[offsets[0]:offsets[-1]], np.diff(offsets)
