"""Mixtures: which row of which output each global batch row is (deterministic, resumable), and MixtureLoader.

    global row g:   0   1   2   3   4   5   6   7  ...      (blocks of MIXTURE_BLOCK rows share one seed)
    dataset:        a   a   b   a   c   a   b   a  ...      u_g < w_a -> a, < w_a + w_b -> b, else c
    k-th draw of a: 0   1       2       3       4  ...
    row of a:       perm_a(epoch k // N_a)[k % N_a]

Dataset choices depend only on (seed, g), so they are the same whatever the batch size or world
size; each dataset walks its own per-epoch permutation, so a small dataset repeats (a new order
each pass) while a large one is still in its first pass. The state is (rows handed out, draws per
dataset): O(datasets), however long the run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from packsft.errors import ConfigError, ResumeError
from packsft.loader.batches import BatchLoader, Step
from packsft.loader.dataset import LabelLayout, PackedDataset
from packsft.loader.gather import DATASET_STREAM, MIXTURE_STREAM, epoch_order, uniform_stream

MIXTURE_BLOCK = 1 << 16


class MixtureDraws:
    """Dataset and row choices of a mixture of outputs with `sizes` rows each.

    Args:
        sizes: rows in each output.
        weights: sampling weights (positive; normalised here).
        seed: the loader's seed.
        stream: first PCG64 stream id of the per-dataset orders (dataset i uses stream + i).
        fingerprints: the outputs' fingerprints, for the mixture's own.
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int, stream: int, fingerprints: list[str]) -> None:
        if any(not math.isfinite(w) or w <= 0 for w in weights):
            raise ConfigError(f"mixture weights must be positive numbers, got {weights}")
        if any(size == 0 for size in sizes):
            raise ConfigError("a mixture output has no rows; drop it from the mixture")
        total = float(sum(weights))
        self.sizes, self.seed, self.stream = sizes, seed, stream
        self.weights = [w / total for w in weights]
        self.bounds = np.cumsum(self.weights)
        identity = [fingerprints, [round(w, 12) for w in self.weights]]
        self.fingerprint = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
        self._block: tuple[int, np.ndarray] | None = None
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def choices(self, position: int, count: int) -> np.ndarray:
        """Dataset index of global rows position .. position+count-1."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            block, offset = divmod(position + done, MIXTURE_BLOCK)
            if self._block is None or self._block[0] != block:
                u = uniform_stream(self.seed, MIXTURE_STREAM, block, MIXTURE_BLOCK)
                # Rounding can leave bounds[-1] a hair under 1; clip so every draw names a dataset.
                self._block = (block, np.minimum(np.searchsorted(self.bounds, u, side="right"), len(self.sizes) - 1))
            take = min(count - done, MIXTURE_BLOCK - offset)
            out[done : done + take] = self._block[1][offset : offset + take]
            done += take
        return out

    def _order(self, dataset: int, epoch: int) -> np.ndarray:
        cached = self._orders.get(dataset)
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_order(self.sizes[dataset], self.seed, epoch, stream=self.stream + dataset))
            self._orders[dataset] = cached
        return cached[1]

    def steps(self, position: int, drawn: list[int], size: int) -> Iterator[tuple[int, list[int], np.ndarray, np.ndarray]]:
        """From (position, drawn) on, yield each global batch: (position, drawn) after it, datasets, rows."""
        while True:
            which = self.choices(position, size)
            rows = np.empty(size, dtype=np.int64)
            for dataset in range(len(self.sizes)):
                at = np.flatnonzero(which == dataset)
                draws = drawn[dataset] + np.arange(len(at))
                epochs, offsets = np.divmod(draws, self.sizes[dataset])
                for epoch in np.unique(epochs).tolist():  # a batch may span epochs of a small output
                    hit = epochs == epoch
                    rows[at[hit]] = self._order(dataset, epoch)[offsets[hit]]
                drawn[dataset] += len(at)
            position += size
            yield position, list(drawn), which, rows


class MixtureLoader(BatchLoader):
    """Batches drawn from several outputs by weight, forever; see the module docstring for the draw.

    Args:
        weights: {output folder (or PackedDataset): weight}; weights are normalised.
        expect_tokenizer: checked against every output (see PackedDataset).
        label_layout: "hf" (default) or the seed notebook's "shifted" (see PackedDataset).
    """

    def __init__(self, weights: dict[Any, float], batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, device: Any = None, pin_memory: bool | None = None, prefetch: int = 2,
                 segments: bool = False, expect_tokenizer: str | None = None, label_layout: LabelLayout = "hf") -> None:
        datasets = [key if isinstance(key, PackedDataset) else PackedDataset(key, expect_tokenizer) for key in weights]
        if not datasets:
            raise ConfigError("a mixture needs at least one output")
        first = datasets[0]
        for other in datasets[1:]:
            for name, theirs, ours in (("seq_length", other.seq_length, first.seq_length),
                                       ("token dtype", other.dtype, first.dtype),
                                       ("tokenizer fingerprint", other.tokenizer_fingerprint, first.tokenizer_fingerprint)):
                if theirs != ours:  # a fingerprint shows its first 12 characters, as everywhere
                    raise ConfigError(f"{other.output.out_dir} and {first.output.out_dir} differ in {name} "
                                      f"({str(theirs)[:12]} and {str(ours)[:12]}); a mixture needs outputs packed alike")
        super().__init__(datasets, batch_size, rank, world_size, seed, device, pin_memory, prefetch, segments,
                         label_layout)
        self.names = [str(d.output.out_dir) for d in datasets]
        self.draws = MixtureDraws([len(d) for d in datasets], list(weights.values()), seed, DATASET_STREAM,
                                 [d.fingerprint for d in datasets])
        self.rows_consumed, self.drawn = 0, [0] * len(datasets)

    def _steps(self) -> Iterator[Step]:
        start = self.rows_consumed
        for position, drawn, which, rows in self.draws.steps(start, list(self.drawn), self.global_batch_size):
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            yield Step(which[mine], rows[mine], {"rows_consumed": position, "drawn": drawn})

    def _set_state(self, state: dict[str, Any]) -> None:
        self.rows_consumed, self.drawn = state["rows_consumed"], state["drawn"]

    def epochs_seen(self) -> dict[str, float]:
        """How many passes over each output the batches handed out so far amount to."""
        return {name: drawn / len(d) for name, drawn, d in zip(self.names, self.drawn, self.datasets)}

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.draws.fingerprint, "seed": self.seed, "rows_consumed": self.rows_consumed,
                "drawn": list(self.drawn), "epochs_seen": self.epochs_seen()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where `state` was saved (exact when the global batch size is the same)."""
        if state.get("fingerprint") != self.draws.fingerprint:
            raise ResumeError("the loader state belongs to another mixture (other outputs or weights); "
                              "resume with the mixture it was saved with")
        self.seed = int(state["seed"])
        self.draws = MixtureDraws([len(d) for d in self.datasets], self.draws.weights, self.seed, DATASET_STREAM,
                                 [d.fingerprint for d in self.datasets])
        self.rows_consumed, self.drawn = int(state["rows_consumed"]), [int(n) for n in state["drawn"]]
