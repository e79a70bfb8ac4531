"""PackedDataset: one packed output as a map-style dataset of training tensors (torch optional until used).

A stored row is L+1 tokens and a mask over its L next-token targets; a batch carries them in one of two layouts:

    stored row       BOS  u    a1   a2   EOS  | pad        loss_mask[i] trains the prediction of tokens[i+1]
    loss_mask         0   1    1    1    0        (here: a1, a2 and EOS are trained)

    "hf" (default)   input_ids     BOS  u    a1   a2   EOS        tokens[:L]
                     labels        -100 -100 a1   a2   EOS        aligned with input_ids, -100 where untrained;
                                                                  the model shifts them (Hugging Face's convention)
                     shift_labels  -100 a1   a2   EOS  -100       already shifted: the row's last target too
    "shifted"        input_ids     tokens[:L],  labels tokens[1:] (the next tokens, never -100),
                     loss_mask     float32, 1 where trained: the layout of the seed notebook packsft began from
                                   (its training loop takes a cross-entropy of labels weighted by loss_mask)

`labels` of length L cannot hold the target of the row's last position (tokens[L]): where that one is trained,
`model(..., labels=labels)` leaves it out, and `shift_labels`, which transformers' causal-LM loss takes as given,
keeps it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from packsft.errors import ConfigError, MissingDependencyError, TokenizerError
from packsft.loader.gather import RowReader, open_shards, output_fingerprint
from packsft.render.tokenizer import load_output_tokenizer
from packsft.write.layout import PackedOutput

if TYPE_CHECKING:
    import torch

# Installs packsft with PyTorch from a checkout (packsft is not on PyPI), or only PyTorch next to an installed packsft.
TORCH_HINT = "pip install -e '.[torch]' in the packsft checkout, or pip install torch"
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
IGNORE_INDEX = -100  # the label PyTorch's cross_entropy and Hugging Face's losses skip
LabelLayout = Literal["hf", "shifted"]
LABEL_LAYOUTS: tuple[LabelLayout, ...] = get_args(LabelLayout)


def torch_module():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"the packsft loader needs PyTorch, which is not installed: {TORCH_HINT}") from None
    return torch


def check_label_layout(layout: str) -> None:
    if layout not in LABEL_LAYOUTS:
        raise ConfigError(f"label_layout {layout!r} is not one of {', '.join(LABEL_LAYOUTS)}")


def training_fields(tokens: torch.Tensor, mask: torch.Tensor, layout: LabelLayout) -> dict[str, torch.Tensor]:
    """`input_ids` and the labels of `layout` (module docstring) from stored rows: tokens (B, L+1) and loss_mask
    (B, L) in their stored dtypes, on any device; int64 out (loss_mask float32)."""
    torch = torch_module()
    input_ids = tokens[:, :-1].to(torch.int64, memory_format=torch.contiguous_format)
    targets = tokens[:, 1:].to(torch.int64, memory_format=torch.contiguous_format)
    if layout == "shifted":
        return {"input_ids": input_ids, "labels": targets, "loss_mask": mask.to(torch.float32)}
    shift_labels = targets.masked_fill(mask == 0, IGNORE_INDEX)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, 1:] = shift_labels[:, :-1]
    return {"input_ids": input_ids, "labels": labels, "shift_labels": shift_labels}


class PackedDataset:
    """Map-style view over every shard of one output; `ds[i]` is row i as training tensors.

    Args:
        out_dir: a complete `packsft pack` output.
        expect_tokenizer: a tokenizer fingerprint (64 hex digits) or a name/path to load; data
            packed with any other tokenizer is refused.
        label_layout: "hf" (labels aligned with input_ids, -100 where untrained, plus shift_labels) or
            "shifted" (the seed notebook's next-token labels and a float loss_mask); see the module docstring.
    """

    def __init__(self, out_dir: str | Path, expect_tokenizer: str | None = None,
                 label_layout: LabelLayout = "hf") -> None:
        torch_module()
        check_label_layout(label_layout)
        self.label_layout = label_layout
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
            try:
                found = load_output_tokenizer(self.output.dataset["tokenizer"], expected).fingerprint
            except TokenizerError as exc:
                raise TokenizerError(
                    f"{exc}. expect_tokenizer takes the folder of a tokenizer, or the fingerprint this output "
                    f"records, which loads none: expect_tokenizer={self.tokenizer_fingerprint!r}"
                ) from None
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
        fields = training_fields(torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask), self.label_layout)
        return {name: value[0] for name, value in fields.items()}

    def segment_lengths(self, index: int) -> np.ndarray:
        """Lengths of the conversation pieces stored in row `index` (over its L+1 tokens)."""
        return self.output.row(index).segment_lengths

