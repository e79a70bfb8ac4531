"""PackedDataset: one packed output as a map-style dataset of training tensors (torch optional until used)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from packsft.errors import MissingDependencyError, TokenizerError
from packsft.loader.gather import RowReader, open_shards, output_fingerprint
from packsft.render.tokenizer import load_output_tokenizer
from packsft.write.layout import PackedOutput

if TYPE_CHECKING:
    import torch

TORCH_HINT = "pip install packsft[torch]"
FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def torch_module():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"the packsft loader needs PyTorch, which is not installed: {TORCH_HINT}") from None
    return torch


class PackedDataset:
    """Map-style view over every shard of one output; `ds[i]` is row i as training tensors.

    Args:
        out_dir: a complete `packsft pack` output.
        expect_tokenizer: a tokenizer fingerprint (64 hex digits) or a name/path to load; data
            packed with any other tokenizer is refused.
    """

    def __init__(self, out_dir: str | Path, expect_tokenizer: str | None = None) -> None:
        torch_module()
        self.output = PackedOutput(out_dir)
        self.reader = RowReader(self.output, open_shards(self.output))
        dataset = self.output.dataset
        self.seq_length: int = dataset["seq_length"]
        self.dtype = np.dtype(dataset["dtype"])
        self.vocab_size: int = dataset["tokenizer"].get("vocab_size", 0)
        self.tokenizer_fingerprint: str = dataset["tokenizer"].get("fingerprint", "")
        self.fingerprint = output_fingerprint(dataset)
        if expect_tokenizer is not None:
            self._check_tokenizer(expect_tokenizer)

    def _check_tokenizer(self, expected: str) -> None:
        if FINGERPRINT.fullmatch(expected):
            found, what = expected, f"fingerprint {expected[:12]}"
        else:
            # The template (and a --chat-template text) the output was packed with, stored in dataset.json.
            found = load_output_tokenizer(self.output.dataset["tokenizer"], expected).fingerprint
            what = f"tokenizer {expected!r} (fingerprint {found[:12]})"
        if found != self.tokenizer_fingerprint:
            packed_with = self.output.dataset["tokenizer"].get("name")
            raise TokenizerError(
                f"{self.output.out_dir}: packed with tokenizer {packed_with!r} (fingerprint "
                f"{self.tokenizer_fingerprint[:12]}), not {what}. Pack the data again with your tokenizer, "
                "or train with the one it was packed with"
            )

    def __len__(self) -> int:
        return len(self.output)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        torch = torch_module()
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        tokens = np.empty((1, self.seq_length + 1), self.dtype)
        mask = np.empty((1, self.seq_length), np.uint8)
        self.reader.read(np.array([index % len(self)], dtype=np.int64), tokens, mask)
        wide = torch.from_numpy(tokens[0].astype(np.int64))
        return {"input_ids": wide[:-1], "labels": wide[1:], "loss_mask": torch.from_numpy(mask[0].astype(np.float32))}

    def segment_lengths(self, index: int) -> np.ndarray:
        """Lengths of the conversation pieces stored in row `index` (over its L+1 tokens)."""
        return self.output.row(index).segment_lengths

