"""PackedLoader: batches of one packed output for one rank (see packsft/loader/batches.py for the flow)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packsft.errors import ConfigError, ResumeError
from packsft.loader.batches import BatchLoader, Step
from packsft.loader.dataset import LabelLayout, PackedDataset
from packsft.loader.gather import epoch_order


class PackedLoader(BatchLoader):
    """Batches of one packed output for one rank; iterating runs the rest of the current epoch.

    Each epoch visits a permutation seeded by (seed, epoch); step k hands rank r the rows
    order[k*G + r*B : k*G + (r+1)*B] with G = batch_size * world_size, so ranks are disjoint and
    together cover the epoch. With drop_last=False the last, shorter global batch is split into
    world_size near-equal parts (a rank may get 0 rows when fewer rows than ranks remain). `label_layout`
    chooses the batch's labels (loader/dataset.py): "hf" (default) or the seed notebook's "shifted".
    """

    def __init__(self, dataset_or_dir: PackedDataset | str | Path, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 device: Any = None, pin_memory: bool | None = None, prefetch: int = 2, segments: bool = False,
                 label_layout: LabelLayout = "hf") -> None:
        dataset = dataset_or_dir if isinstance(dataset_or_dir, PackedDataset) else PackedDataset(dataset_or_dir)
        super().__init__([dataset], batch_size, rank, world_size, seed, device, pin_memory, prefetch, segments,
                         label_layout)
        self.dataset, self.shuffle, self.drop_last = dataset, shuffle, drop_last
        if drop_last and len(dataset) < self.global_batch_size:
            raise ConfigError(f"{dataset.output.out_dir} has {len(dataset)} rows, fewer than one global batch of "
                              f"{self.global_batch_size}; lower batch_size or pass drop_last=False")
        self.epoch, self.rows_consumed = 0, 0

    def __len__(self) -> int:
        """Steps in a whole epoch."""
        steps, rest = divmod(len(self.dataset), self.global_batch_size)
        return steps + (1 if rest and not self.drop_last else 0)

    def _has_step(self, position: int) -> bool:
        remaining = len(self.dataset) - position
        return remaining >= self.global_batch_size or (not self.drop_last and remaining > 0)

    def _steps(self) -> Iterator[Step]:
        epoch, position, size = self.epoch, self.rows_consumed, self.global_batch_size
        order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)
        while self._has_step(position):
            chunk = order[position : position + size]
            if len(chunk) == size:
                mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            else:
                mine = np.array_split(chunk, self.world_size)[self.rank]
            position += len(chunk)
            state = (epoch, position) if self._has_step(position) else (epoch + 1, 0)
            yield Step(np.zeros(len(mine), dtype=np.int64), mine, {"epoch": state[0], "rows_consumed": state[1]})

    def _set_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.rows_consumed = state["epoch"], state["rows_consumed"]

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.dataset.fingerprint, "seed": self.seed, "epoch": self.epoch,
                "rows_consumed": self.rows_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where `state` was saved (any world_size; exact when the global batch size is the same)."""
        if state.get("fingerprint") != self.dataset.fingerprint:
            raise ResumeError(f"the loader state belongs to another output (fingerprint {str(state.get('fingerprint'))[:12]}, "
                              f"this one is {self.dataset.fingerprint[:12]}); resume with the data it was saved with")
        self.seed, self.epoch, self.rows_consumed = int(state["seed"]), int(state["epoch"]), int(state["rows_consumed"])
        if not self._has_step(self.rows_consumed):
            self.epoch, self.rows_consumed = self.epoch + 1, 0

