"""transformers.Trainer on a packed output: per-piece position_ids, no attention mask, use_cache=False.

A Hugging Face model keeps the conversation pieces of a packed row apart only when it gets
`position_ids` that restart at every piece, no `attention_mask`, and `use_cache=False`: transformers
then builds the block-causal mask itself (SDPA, eager) or derives cu_seqlens for FlashAttention. With
an all-ones attention_mask, or the default use_cache=True, it silently attends across pieces.

    row      BOS u a a a EOS | BOS u a a | pad pad      (stored: L+1 tokens, mask over L labels)
    input_ids      tokens[:L]
    position_ids   0 1 2 3 4 5   0 1 2 3   0   ...     restart per piece; padding restarts too
    shift_labels   tokens[1:] where trained, else -100  (used as they are by the model's loss)
    labels         shift_labels moved one right          (HF's own convention; the loss ignores it
                                                          when shift_labels is given)

HF causal-LM losses shift `labels` by one themselves; packsft's mask already names the next token, so
the collator hands the model `shift_labels` too (transformers' ForCausalLMLoss takes them unshifted,
and Trainer counts `num_items_in_batch` from them). Every trained label counts, including the row's
last, which an L-token `labels` tensor could not hold.

    trainer = Trainer(model=model, args=args, train_dataset=TrainerDataset("out/"), data_collator=collate_rows)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packsft.loader.dataset import IGNORE_INDEX, PackedDataset, torch_module
from packsft.loader.gather import batch_segments


def piece_positions(ends: np.ndarray, seq_length: int) -> np.ndarray:
    """position_ids of one row's L inputs from where its pieces end (the padding is one more piece)."""
    cu_seqlens = batch_segments(ends, 1, seq_length).astype(np.int64)
    return np.arange(seq_length, dtype=np.int64) - np.repeat(cu_seqlens[:-1], np.diff(cu_seqlens))


class TrainerDataset:
    """Rows of a packed output as transformers.Trainer features (numpy int64 arrays of length L).

    Args:
        dataset_or_dir: a PackedDataset or the OUT_DIR of a `packsft pack` run.
        expect_tokenizer: passed to PackedDataset: refuse data packed with another tokenizer.
    """

    def __init__(self, dataset_or_dir: PackedDataset | str | Path, expect_tokenizer: str | None = None) -> None:
        self.dataset = (dataset_or_dir if isinstance(dataset_or_dir, PackedDataset)
                        else PackedDataset(dataset_or_dir, expect_tokenizer=expect_tokenizer))
        self.seq_length = self.dataset.seq_length

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        row = np.array([index % len(self)], dtype=np.int64)
        tokens = np.empty((1, self.seq_length + 1), self.dataset.dtype)
        mask = np.empty((1, self.seq_length), np.uint8)
        self.dataset.reader.read(row, tokens, mask)
        tokens64 = tokens[0].astype(np.int64)
        shift_labels = np.where(mask[0] > 0, tokens64[1:], IGNORE_INDEX)
        ends = self.dataset.reader.piece_bounds(row, np.zeros(1, np.int64), self.seq_length)
        return {
            "input_ids": tokens64[:-1],
            "position_ids": piece_positions(ends, self.seq_length),
            "labels": np.concatenate([[IGNORE_INDEX], shift_labels[:-1]]),
            "shift_labels": shift_labels,
        }


def collate_rows(features: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Stack TrainerDataset rows into a batch and add use_cache=False (never an attention_mask)."""
    torch = torch_module()
    batch: dict[str, Any] = {name: torch.from_numpy(np.stack([f[name] for f in features])) for name in features[0]}
    batch["use_cache"] = False
    return batch
