"""Read a packed output back: dataset.json plus memory-mapped shard arrays, rows addressed globally.

Used by inspect, stats, report and verify; the torch loader builds on it. Nothing is copied: arrays
are opened with `np.load(mmap_mode="r", allow_pickle=False)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packsft.errors import OutputError
from packsft.writer import SHARDS_DIR, read_dataset


@dataclass(frozen=True)
class Row:
    tokens: np.ndarray  # (L+1,)
    loss_mask: np.ndarray  # (L,)
    segment_lengths: np.ndarray

    @property
    def segment_starts(self) -> np.ndarray:
        return np.cumsum(self.segment_lengths) - self.segment_lengths


class PackedOutput:
    """A complete packsft output folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.dataset: dict[str, Any] = read_dataset(self.out_dir)
        self.seq_length: int = self.dataset["seq_length"]
        self.shards = [shard["name"] for shard in self.dataset["shards"]]
        rows = [shard["rows"] for shard in self.dataset["shards"]]
        self.row_offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.row_offsets[-1])

    def array(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._arrays:
            path = self.out_dir / SHARDS_DIR / self.shards[shard] / f"{name}.npy"
            if not path.exists():
                if self.dataset.get("config", {}).get("output_format") == "parquet":
                    raise OutputError(
                        f"{self.out_dir}: written with --output-format parquet only; repack with npy or both to read it here"
                    )
                raise OutputError(f"{path}: missing; the output is incomplete (rerun the pack, or `packsft verify`)")
            try:
                self._arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise OutputError(f"{path}: not a readable .npy array ({exc}); the output is corrupt") from None
        return self._arrays[key]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row within shard) of global row `index`."""
        if not 0 <= index < len(self):
            raise OutputError(f"chunk {index} does not exist; this output has chunks 0..{len(self) - 1}")
        shard = int(np.searchsorted(self.row_offsets, index, side="right") - 1)
        return shard, index - int(self.row_offsets[shard])

    def row(self, index: int) -> Row:
        shard, local = self.locate(index)
        offsets = self.array(shard, "row_segments")
        return Row(
            tokens=np.asarray(self.array(shard, "tokens")[local]),
            loss_mask=np.asarray(self.array(shard, "loss_mask")[local]),
            segment_lengths=np.asarray(self.array(shard, "segment_lengths")[offsets[local] : offsets[local + 1]]),
        )
