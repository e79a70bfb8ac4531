"""A packed row trains a real transformer exactly like its pieces fed one by one (issue 11, part 3).

Tiny random Llama and GPT-2 models (built from configs, SDPA attention, no weights downloaded) on rows of
a real bestfit output (ShareGPT, GPT-2 roles): with the loader's position_ids, no attention_mask and
use_cache=False, the logits of every piece equal the piece fed alone and the masked loss of the packed
batch is the sum of the pieces' masked losses. Without position_ids, or with the default use_cache=True,
transformers attends across pieces: the negative controls pin that pitfall down.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.interop_helpers import pack_sample

pytestmark = pytest.mark.slow  # tiny transformers run on CPU

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 256
ROWS = 3
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def packed(tmp_path_factory, sharegpt_dir, gpt2_dir):
    # --turn-cut 64 fills rows with the starts of turns: at this short L the default (no turn cut to fill
    # a row) leaves most rows one or two pieces, and these tests need rows of several pieces.
    return pack_sample(tmp_path_factory.mktemp("fidelity"), sharegpt_dir, gpt2_dir, seq_length=SEQ, turn_cut=64)


@pytest.fixture(scope="module")
def batch(packed):
    """The first unshuffled batch of the loader in which every row holds at least three segments (the seed notebook's
    layout: labels the next tokens, and loss_mask)."""
    from packsft.loader import PackedLoader

    for batch in PackedLoader(packed, batch_size=ROWS, shuffle=False, segments=True, label_layout="shifted"):
        rows = [row for row, _, _ in segments(batch)]
        if min(rows.count(row) for row in range(ROWS)) >= 3:
            return batch
    pytest.fail("no batch of the sample has three segments in every row")


def tiny_model(kind: str, vocab_size: int):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=SEQ + 1, attn_implementation="sdpa")
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=SEQ + 1,
                                     attn_implementation="sdpa")
    return transformers.GPT2LMHeadModel(config).eval()


def segments(batch):
    """(row, start, end) of every segment of the batch, from the loader's cu_seqlens."""
    cu = batch["cu_seqlens"].tolist()
    return [(start // SEQ, start % SEQ, start % SEQ + end - start) for start, end in zip(cu, cu[1:])]


def masked_loss_sum(logits, labels, mask):
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), reduction="none")
    return (per_token * mask.flatten()).sum()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, packed):
    from packsft import read_dataset

    return tiny_model(request.param, read_dataset(packed)["tokenizer"]["vocab_size"])


@torch.no_grad()
def test_packed_logits_and_loss_equal_the_pieces_fed_alone(model, batch):
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    piece_losses, worst = [], 0.0
    for row, start, end in segments(batch):
        alone = model(input_ids=batch["input_ids"][row : row + 1, start:end], use_cache=False).logits[0]
        worst = max(worst, float((alone - packed[row, start:end]).abs().max()))
        piece_losses.append(masked_loss_sum(alone, batch["labels"][row, start:end], batch["loss_mask"][row, start:end]))
    assert worst <= TOLERANCE
    total = masked_loss_sum(packed, batch["labels"], batch["loss_mask"])
    assert batch["loss_mask"].sum() > 0
    assert torch.allclose(total, torch.stack(piece_losses).sum(), rtol=1e-5, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("call", ["no position_ids", "use_cache=True"])
def test_without_the_right_call_pieces_see_each_other(model, batch, call):
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    if call == "no position_ids":
        wrong = model(input_ids=batch["input_ids"], use_cache=False).logits
    else:
        wrong = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
    first_row, first_start, first_end = segments(batch)[0]
    # The first piece of a row sees nothing before it either way; every later piece differs.
    assert torch.allclose(wrong[first_row, first_start:first_end], packed[first_row, first_start:first_end], atol=TOLERANCE)
    later = [(row, start, end) for row, start, end in segments(batch) if start > 0]
    assert later
    assert all(float((wrong[row, start:end] - packed[row, start:end]).abs().max()) > 1e-3 for row, start, end in later)


# --- transformers.Trainer through packsft.loader.hf ---------------------------------------------------


@torch.no_grad()
def test_trainer_batches_give_the_packed_masked_loss(model, packed, batch):
    """collate_rows' batch (position_ids, shift_labels, use_cache=False) gives the loader's masked mean loss, and
    holds the labels of the loader's Hugging Face layout."""
    from packsft.loader import PackedLoader, TrainerDataset, collate_rows

    rows = TrainerDataset(packed)
    loader_batch = next(iter(PackedLoader(packed, batch_size=ROWS, shuffle=False, segments=True, label_layout="shifted")))
    hf_batch = next(iter(PackedLoader(packed, batch_size=ROWS, shuffle=False, segments=True)))
    features = collate_rows([rows[i] for i in range(ROWS)])
    assert "attention_mask" not in features and features["use_cache"] is False
    assert torch.equal(features["position_ids"], loader_batch["position_ids"])
    assert torch.equal(features["input_ids"], loader_batch["input_ids"])
    assert all(torch.equal(features[name], hf_batch[name]) for name in ("input_ids", "labels", "shift_labels"))
    loss = model(**features).loss
    logits = model(input_ids=loader_batch["input_ids"], position_ids=loader_batch["position_ids"], use_cache=False).logits
    expected = masked_loss_sum(logits, loader_batch["labels"], loader_batch["loss_mask"]) / loader_batch["loss_mask"].sum()
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_trainer_trains_three_steps(packed, tmp_path):
    from packsft import read_dataset
    from packsft.loader import TrainerDataset, collate_rows

    model = tiny_model("llama", read_dataset(packed)["tokenizer"]["vocab_size"]).train()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TrainerDataset(packed), data_collator=collate_rows)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 3 and len(losses) == 3 and all(np.isfinite(losses))
