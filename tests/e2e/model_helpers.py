"""What the tiny-transformer checks share: the masked loss of one sequence, and of every packed segment."""

from __future__ import annotations

from packsft.write.layout import PackedOutput


def masked_loss(model, ids: list[int], trained: list[bool]) -> float:
    """Summed cross-entropy of the labels ids[1:] where trained (trained[i] is the flag of ids[i + 1])."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0, :-1].double()
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    return float(losses[torch.tensor(trained)].sum())


def packed_loss(model, out) -> float:
    """The masked loss of every packed piece, each fed alone (segment isolation is tests/e2e/test_model_fidelity.py's)."""
    output, total = PackedOutput(out), 0.0
    for shard in range(len(output.shards)):
        tokens, mask = output.array(shard, "tokens"), output.array(shard, "loss_mask")
        lengths, row_segments = output.array(shard, "segment_lengths"), output.array(shard, "row_segments")
        for row in range(len(tokens)):
            start = 0
            for length in lengths[row_segments[row]:row_segments[row + 1]].tolist():
                ids = tokens[row, start:start + length].tolist()
                total += masked_loss(model, ids, mask[row, start:start + length - 1].astype(bool).tolist())
                start += length
    return total
