"""`packsft export`: each format read back by its trainer's own library, on real ShareGPT outputs.

TRL's SFTTrainer trains a tiny random model for 3 steps on the trl export and its collator sees
packsft's tokens, pieces and trained labels; megatron-core's IndexedDataset, OLMo-core's
NumpyFSLDataset and `datasets.load_dataset` read the other exports back. Megatron-Bridge cannot be
installed here, so its packed parquet is read the way its collate function reads it (see
read_bridge_row). Libraries come from `pip install -e '.[interop]'`; each test skips without its own.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from packsft import PackedOutput, load_tokenizer
from packsft.cli import main
from packsft.export import EXPORT_JSON, TARGETS, export_output
from packsft.loader.gather import output_fingerprint
from tests.interop_helpers import pack_sample

pytestmark = pytest.mark.slow  # the trainers' own libraries read real outputs

SEQ = 128
IGNORE = -100


@pytest.fixture(scope="module")
def gpt2_out(tmp_path_factory, sharegpt_dir, gpt2_dir):
    return pack_sample(tmp_path_factory.mktemp("gpt2"), sharegpt_dir, gpt2_dir, seq_length=SEQ)


@pytest.fixture(scope="module")
def qwen3_out(tmp_path_factory, sharegpt_dir, qwen3_dir):
    return pack_sample(tmp_path_factory.mktemp("qwen3"), sharegpt_dir, qwen3_dir, seq_length=SEQ, template="chat",
                       records=60)


def packsft_rows(out):
    """Every row as (tokens without padding, piece lengths, trained-label flags per token)."""
    output = PackedOutput(out)
    rows = []
    for index in range(len(output)):
        row = output.row(index)
        used = int(row.segment_lengths.sum())
        flags = np.concatenate([[0], row.loss_mask])[:used]
        rows.append((row.tokens[:used].astype(np.int64), row.segment_lengths.tolist(), flags.astype(bool)))
    return rows


def exported(out, tmp_path, to):
    dest = tmp_path / to
    export_output(out, dest, to)
    return dest


# --- TRL ------------------------------------------------------------------------------------------


class RecordingCollator:
    """Wraps TRL's collator and keeps every batch it builds, with the examples it was given."""

    def __init__(self, collator):
        self.collator, self.seen = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.seen.append(([list(e["input_ids"]) for e in examples], batch))
        return batch


def check_collated(rows, seen):
    by_tokens = {tuple(tokens.tolist()): (lengths, flags) for tokens, lengths, flags in rows}
    for examples, batch in seen:
        input_ids, labels = batch["input_ids"][0].numpy(), batch["labels"][0].numpy()
        positions = batch["position_ids"][0].numpy()
        assert "attention_mask" not in batch
        start = 0
        for example in examples:
            lengths, flags = by_tokens[tuple(example)]
            end = start + len(example)
            assert input_ids[start:end].tolist() == example
            trained = labels[start:end] != IGNORE
            assert np.array_equal(trained, flags)
            assert np.array_equal(labels[start:end][trained], input_ids[start:end][trained])
            assert positions[start:end].tolist() == [p for n in lengths for p in range(n)]
            start = end


@pytest.mark.parametrize("which", ["gpt2_out", "qwen3_out"])
def test_trl_sft_trainer_trains_on_the_trl_export(which, request, tmp_path):
    datasets = pytest.importorskip("datasets", reason="pip install -e '.[interop]'")
    trl = pytest.importorskip("trl", reason="pip install -e '.[interop]'")
    import transformers

    out = request.getfixturevalue(which)
    dest = exported(out, tmp_path, "trl")
    info = json.loads((dest / EXPORT_JSON).read_text())
    train = datasets.load_dataset("parquet", data_files=str(dest / "train-*.parquet"), split="train")
    assert train.column_names == ["input_ids", "seq_lengths", "labels"] and len(train) == len(PackedOutput(out))
    dataset = PackedOutput(out).dataset
    tokenizer = load_tokenizer(dataset["tokenizer"]["name"], dataset["tokenizer"]["template"]).hf
    config = transformers.LlamaConfig(vocab_size=dataset["tokenizer"]["vocab_size"], hidden_size=32,
                                      intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, max_position_embeddings=info["loading"]["max_position_needed"])
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                         report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0,
                         **info["loading"]["sft_config"])
    trainer = trl.SFTTrainer(model=transformers.LlamaForCausalLM(config), args=args, train_dataset=train,
                             processing_class=tokenizer)
    trainer.data_collator = recorder = RecordingCollator(trainer.data_collator)
    trainer.train()
    assert trainer.state.global_step == 3 and len(recorder.seen) >= 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(np.isfinite(losses))
    check_collated(packsft_rows(out), recorder.seen)


# --- Megatron ---------------------------------------------------------------------------------------


def test_megatron_core_indexed_dataset_reads_the_megatron_export(gpt2_out, tmp_path):
    pytest.importorskip("megatron.core", reason="pip install -e '.[interop]'")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dest = exported(gpt2_out, tmp_path, "megatron")
    output = PackedOutput(gpt2_out)
    for shard, name in enumerate(output.shards):
        tokens_ds = IndexedDataset(str(dest / f"shard_{name}"))
        masks_ds = IndexedDataset(str(dest / f"shard_{name}_loss_mask"))
        segments = output.array(shard, "segment_lengths")
        assert np.array_equal(tokens_ds.sequence_lengths, segments)
        assert np.array_equal(tokens_ds.document_indices, output.array(shard, "row_segments"))
        assert np.array_equal(masks_ds.document_indices, tokens_ds.document_indices)
        for local in range(output.array(shard, "tokens").shape[0]):
            row = output.row(int(output.row_offsets[shard]) + local)
            first, last = tokens_ds.document_indices[local : local + 2]
            pieces = [tokens_ds[i] for i in range(first, last)]
            assert [len(p) for p in pieces] == row.segment_lengths.tolist()
            used = int(row.segment_lengths.sum())
            assert np.array_equal(np.concatenate(pieces), row.tokens[:used])
            mask = np.concatenate([masks_ds[i] for i in range(first, last)])
            assert np.array_equal(mask, np.concatenate([row.loss_mask, [0]])[:used])  # input-aligned


def read_bridge_row(input_ids, seq_start_id, loss_mask):
    """What Megatron-Bridge's GPTSFTPackedDataset collate trains on: per piece, inputs [s, e-1) predict
    [s+1, e) where loss_mask[s:e-1] is set. Returns {input position: label token}."""
    bounds = list(seq_start_id) + [len(input_ids)]
    trained = {}
    for start, end in zip(bounds, bounds[1:]):
        for i in range(start, end - 1):
            if loss_mask[i]:
                trained[i] = input_ids[i + 1]
    return trained


def test_megatron_bridge_packed_parquet_trains_packsfts_labels(gpt2_out, tmp_path):
    import pyarrow.parquet as pq

    dest = exported(gpt2_out, tmp_path, "megatron")
    output = PackedOutput(gpt2_out)
    table = pq.read_table(sorted(dest.glob("*.idx.parquet")))
    assert table.column_names == ["input_ids", "seq_start_id", "loss_mask"] and table.num_rows == len(output)
    for index, record in enumerate(table.to_pylist()):
        row = output.row(index)
        assert record["seq_start_id"] == row.segment_starts.tolist()
        expected = {int(i): int(row.tokens[i + 1]) for i in np.flatnonzero(row.loss_mask)}
        assert read_bridge_row(record["input_ids"], record["seq_start_id"], record["loss_mask"]) == expected


# --- OLMo-core --------------------------------------------------------------------------------------


def test_olmo_core_numpy_fsl_dataset_reads_the_olmo_core_export(gpt2_out, tmp_path):
    pytest.importorskip("olmo_core.data", reason="pip install -e '.[interop]'")
    from olmo_core.data import NumpyFSLDataset
    from olmo_core.data.utils import iter_document_indices

    dest = exported(gpt2_out, tmp_path, "olmo-core")
    loading = json.loads((dest / EXPORT_JSON).read_text())["loading"]
    output = PackedOutput(gpt2_out)
    dataset = NumpyFSLDataset(*[dest / p for p in loading["paths"]], sequence_length=loading["sequence_length"],
                              pad_token_id=loading["pad_token_id"], eos_token_id=loading["eos_token_id"],
                              vocab_size=loading["vocab_size"], dtype=np.dtype(loading["dtype"]).type,
                              label_mask_paths=[dest / p for p in loading["label_mask_paths"]])
    dataset.work_dir = tmp_path / "olmo-work"
    assert len(dataset) == len(output)
    for index in range(len(output)):
        item, row = dataset[index], output.row(index)
        assert np.array_equal(item["input_ids"].numpy(), row.tokens)
        assert np.array_equal(item["label_mask"].numpy(), np.concatenate([[0], row.loss_mask]).astype(bool))
    width = SEQ + 1
    for shard, path in enumerate(loading["paths"]):
        documents = list(iter_document_indices(dest / path, use_array_if_local=False))
        starts, lengths = [], output.array(shard, "segment_lengths")
        for local in range(output.array(shard, "tokens").shape[0]):
            row = output.row(int(output.row_offsets[shard]) + local)
            starts += (local * width + row.segment_starts).tolist()
        assert documents == [(s, s + int(n)) for s, n in zip(starts, lengths)]


# --- HF datasets ------------------------------------------------------------------------------------


def test_datasets_load_dataset_reads_the_hf_export(gpt2_out, tmp_path):
    datasets = pytest.importorskip("datasets", reason="pip install -e '.[interop]'")
    dest = exported(gpt2_out, tmp_path, "hf")
    output = PackedOutput(gpt2_out)
    loaded = datasets.load_dataset("parquet", data_files=str(dest / "data" / "*.parquet"), split="train")
    assert loaded.column_names == ["input_ids", "loss_mask", "seq_lengths"] and len(loaded) == len(output)
    for index, record in enumerate(loaded):
        row = output.row(index)
        assert record["input_ids"] == row.tokens.tolist() and record["loss_mask"] == row.loss_mask.tolist()
        pad = SEQ + 1 - int(row.segment_lengths.sum())
        assert record["seq_lengths"] == row.segment_lengths.tolist() + ([pad] if pad else [])
    assert len(datasets.load_dataset(str(dest), split="train")) == len(output)


# --- the command, the manifest, determinism ---------------------------------------------------------


@pytest.mark.parametrize("to", sorted(TARGETS))
def test_export_is_deterministic_and_names_its_source(gpt2_out, tmp_path, to):
    first, second = export_output(gpt2_out, tmp_path / "a", to), export_output(gpt2_out, tmp_path / "b", to)
    manifests = [json.loads((result.dest / EXPORT_JSON).read_text()) for result in (first, second)]
    assert manifests[0] == manifests[1]
    assert manifests[0]["source"]["fingerprint"] == output_fingerprint(PackedOutput(gpt2_out).dataset)
    assert manifests[0]["target"] == to and manifests[0]["matched_version"] == TARGETS[to].matched_version
    written = sorted(str(p.relative_to(first.dest)) for p in first.dest.rglob("*") if p.is_file())
    assert written == sorted([f["path"] for f in manifests[0]["files"]] + [EXPORT_JSON, ".packsft-export"])


def test_export_command(gpt2_out, tmp_path):
    runner = CliRunner()
    dest = tmp_path / "trl"
    result = runner.invoke(main, ["export", str(gpt2_out), str(dest), "--to", "trl", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wrote 2 files (") and f"to {dest} in " in result.output
    again = runner.invoke(main, ["export", str(gpt2_out), str(dest), "--to", "trl"])
    assert again.exit_code == 1
    assert again.output == f"Error: {dest}: already holds a packsft export. Pass --overwrite to replace it\n"
    assert runner.invoke(main, ["export", str(gpt2_out), str(dest), "--to", "hf", "--overwrite", "-q"]).exit_code == 0
    assert (dest / "data").is_dir() and not list(dest.glob("train-*.parquet"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = runner.invoke(main, ["export", str(gpt2_out), str(other), "--to", "trl", "--overwrite"])
    assert refused.exit_code == 1 and "not empty and not a packsft export" in refused.output
    assert (other / "notes.txt").read_text() == "keep me"
    inside = runner.invoke(main, ["export", str(gpt2_out), str(gpt2_out / "exp"), "--to", "trl"])
    assert inside.exit_code == 1 and "inside the packed output" in inside.output


def test_cli_choices_are_the_export_targets():
    command = main.get_command(None, "export")
    choice = next(p for p in command.params if p.name == "target").type
    assert sorted(choice.choices) == sorted(TARGETS)


# --- topology-aware rows (--pad-multiple, --max-segments) ------------------------------------------

MULTIPLE, MOST = 8, 3


@pytest.fixture(scope="module")
def padded_out(tmp_path_factory, sharegpt_dir, gpt2_dir):
    return pack_sample(tmp_path_factory.mktemp("padded"), sharegpt_dir, gpt2_dir, seq_length=SEQ,
                       pad_multiple=MULTIPLE, max_segments=MOST)


def bridge_collate_boundaries(seq_start_id, length, metadata):
    """cu_seqlens_padded as Bridge's collate builds them with pad_seq_to_mult > 1 and pad_cu_seqlens (max_length =
    L): each sequence gives its length - 1 inputs, the row's end is appended, then zero-length sequences up to
    max_samples_per_bin + 2 boundaries."""
    bounds = list(seq_start_id) + [length]
    cu = [0]
    for start, end in zip(bounds, bounds[1:]):
        cu.append(cu[-1] + end - start - 1)
    if cu[-1] != SEQ:
        cu.append(SEQ)
    most = max(entry["max_samples_per_bin"] for entry in metadata)
    return cu + [SEQ] * (most - len(cu) + 2)


def test_megatron_bridge_reads_padded_sequences_at_multiples(padded_out, tmp_path):
    import pyarrow.parquet as pq

    dest = exported(padded_out, tmp_path, "megatron")
    loading = json.loads((dest / EXPORT_JSON).read_text())["loading"]
    assert (loading["pad_seq_to_mult"], loading["pad_cu_seqlens"]) == (MULTIPLE, True)
    output = PackedOutput(padded_out)
    rows = 0
    for name, metadata_path in zip(output.shards, loading["pack_metadata_file_paths"]):
        metadata = json.loads((dest / metadata_path).read_text())
        assert metadata[0]["max_samples_per_bin"] == MOST
        for record in pq.read_table(dest / f"shard_{name}.idx.parquet").to_pylist():
            row = output.row(rows)
            rows += 1
            cu = bridge_collate_boundaries(record["seq_start_id"], len(record["input_ids"]), metadata)
            assert len(cu) == MOST + 2 and all(b % MULTIPLE == 0 for b in cu)  # fixed width, CP-aligned
            assert cu[: len(row.segment_lengths) + 1] == [0, *np.cumsum(row.segment_lengths).tolist()]
            expected = {int(i): int(row.tokens[i + 1]) for i in np.flatnonzero(row.loss_mask)}
            # Bridge's input position k of sequence j is the row's position k - j (one extra pad per sequence).
            trained = read_bridge_row(record["input_ids"], record["seq_start_id"], record["loss_mask"])
            starts = record["seq_start_id"]
            shifted = {i - (np.searchsorted(starts, i, side="right") - 1): label for i, label in trained.items()}
            assert shifted == expected
    assert rows == len(output)


def test_megatron_core_and_olmo_core_read_padded_documents(padded_out, tmp_path):
    pytest.importorskip("megatron.core", reason="pip install -e '.[interop]'")
    pytest.importorskip("olmo_core.data", reason="pip install -e '.[interop]'")
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from olmo_core.data.utils import iter_document_indices

    output = PackedOutput(padded_out)
    megatron, olmo = exported(padded_out, tmp_path, "megatron"), exported(padded_out, tmp_path, "olmo-core")
    loading = json.loads((olmo / EXPORT_JSON).read_text())["loading"]
    assert (loading["document_length_multiple"], loading["max_documents_per_instance"]) == (MULTIPLE, MOST)
    for shard, name in enumerate(output.shards):
        lengths = output.array(shard, "segment_lengths")
        indexed = IndexedDataset(str(megatron / f"shard_{name}"))
        assert np.array_equal(indexed.sequence_lengths, lengths) and (lengths % MULTIPLE == 0).all()
        assert np.diff(indexed.document_indices).max() <= MOST
        documents = list(iter_document_indices(olmo / loading["paths"][shard], use_array_if_local=False))
        assert [end - start for start, end in documents] == lengths.tolist()
        per_row = np.bincount(np.array([start for start, _ in documents]) // (SEQ + 1))
        assert per_row.max() <= MOST
