"""Stream packed outputs into a training loop: map-style dataset, per-rank batches, mixtures.

    dataset.py   PackedDataset: one output, checked, rows read with pread
    gather.py    row reads, seeded orders, segment bounds of a batch
    batches.py   what every loader shares: background reads, device copies, varlen fields
    packed.py    PackedLoader: one output, per rank, exactly resumable
    mixture.py   MixtureLoader: weighted draws over several outputs
    hf.py        TrainerDataset + collate_rows: transformers.Trainer with per-piece position_ids
"""

from packsft.loader.dataset import PackedDataset
from packsft.loader.hf import TrainerDataset, collate_rows
from packsft.loader.mixture import MixtureLoader
from packsft.loader.packed import PackedLoader

__all__ = ["MixtureLoader", "PackedDataset", "PackedLoader", "TrainerDataset", "collate_rows"]
