"""The loader's batches in Hugging Face's convention: a model's own loss from `labels` (and `shift_labels`) is the
masked next-token loss of the seed notebook's layout (loader/dataset.py).

A tiny random LlamaForCausalLM (built from a config, on the CPU) reads a batch of demo conversations packed at L=64,
where conversations longer than a row are split, so some rows train their last target, which only `shift_labels`
holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the loader tests need PyTorch (pip install -e '.[torch]')")
transformers = pytest.importorskip("transformers")

from packsft import PackConfig  # noqa: E402
from packsft.demo import demo_conversations  # noqa: E402
from packsft.loader import PackedLoader  # noqa: E402
from packsft.run import run_pack  # noqa: E402
from tests.helpers import write_conversations  # noqa: E402

SEQ, BATCH = 64, 16


@pytest.fixture(scope="module")
def packed(tmp_path_factory, demo_tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("labels")
    write_conversations(folder / "data" / "demo.parquet", demo_conversations())
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=SEQ)
    return run_pack(folder / "data", folder / "out", config, quiet=True).out_dir


@pytest.fixture(scope="module")
def model(packed):
    loader = PackedLoader(packed, BATCH)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=loader.dataset.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=SEQ)
    return transformers.LlamaForCausalLM(config).eval()


def first_batch(packed: Path, label_layout: str) -> dict:
    return next(iter(PackedLoader(packed, BATCH, shuffle=False, segments=True, label_layout=label_layout)))


@pytest.mark.slow
@torch.no_grad()
def test_the_models_own_loss_from_the_batch_is_the_masked_loss(packed, model):
    batch, shifted = first_batch(packed, "hf"), first_batch(packed, "shifted")
    assert torch.equal(batch["input_ids"], shifted["input_ids"])
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    logits = model(**inputs).logits
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), shifted["labels"].flatten(), reduction="none")
    mask = shifted["loss_mask"]
    manual = (per_token * mask.flatten()).sum() / mask.sum()

    exact = model(**inputs, labels=batch["labels"], shift_labels=batch["shift_labels"]).loss
    assert torch.allclose(exact, manual, rtol=1e-6, atol=0)

    # labels alone: transformers shifts them and pads the end, so the row's last target drops out where trained.
    assert bool(mask[:, -1].any())
    per_row = per_token.view(BATCH, SEQ)
    without_last = (per_row[:, :-1] * mask[:, :-1]).sum() / mask[:, :-1].sum()
    labels_only = model(**inputs, labels=batch["labels"]).loss
    assert torch.allclose(labels_only, without_last, rtol=1e-6, atol=0)
    assert not torch.allclose(labels_only, manual, rtol=1e-6, atol=0)


def test_labels_are_the_masked_targets_moved_one_right(packed):
    batch, shifted = first_batch(packed, "hf"), first_batch(packed, "shifted")
    targets = torch.where(shifted["loss_mask"] > 0, shifted["labels"], -100)
    assert torch.equal(batch["shift_labels"], targets)
    assert torch.equal(batch["labels"][:, 1:], targets[:, :-1]) and bool((batch["labels"][:, 0] == -100).all())
    trained = batch["labels"] != -100
    assert torch.equal(batch["labels"][trained], batch["input_ids"][trained])  # a label names its own input token
    assert set(batch) == {"input_ids", "labels", "shift_labels", "position_ids", "cu_seqlens", "max_seqlen"}
    assert set(shifted) == {"input_ids", "labels", "loss_mask", "position_ids", "cu_seqlens", "max_seqlen"}
