"""The loader: rows across shards, rank slicing, exact resume, mixtures, segments, refusals, README example.

Outputs are packed here from the demo conversations (split over three input files, so three shards)
with the demo tokenizer and a short row length, so every test is hermetic and quick.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the loader tests need PyTorch (pip install -e '.[torch]')")

from packsft import PackConfig  # noqa: E402
from packsft.demo import build_demo_tokenizer, demo_conversations  # noqa: E402
from packsft.errors import ConfigError, OutputError, ResumeError, TokenizerError  # noqa: E402
from packsft.loader import MixtureLoader, PackedDataset, PackedLoader  # noqa: E402
from packsft.loader.mixture import MixtureDraws  # noqa: E402
from packsft.run import run_pack  # noqa: E402
from tests.helpers import write_conversations  # noqa: E402

SEQ = 64
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo-data")
    records = demo_conversations()
    for part in range(3):
        write_conversations(folder / f"part{part}.parquet", records[part::3])
    return folder


def pack(data: Path, out: Path, tokenizer: Path, **config) -> Path:
    settings = {"seq_length": SEQ, **config}
    run_pack(data, out, PackConfig(tokenizer=str(tokenizer), **settings), quiet=True, overwrite=True)
    return out


@pytest.fixture(scope="module")
def bestfit(tmp_path_factory, demo_data, demo_tokenizer_dir) -> Path:
    return pack(demo_data, tmp_path_factory.mktemp("out") / "bestfit", demo_tokenizer_dir)


@pytest.fixture(scope="module")
def linear(tmp_path_factory, demo_data, demo_tokenizer_dir) -> Path:
    return pack(demo_data, tmp_path_factory.mktemp("out") / "linear", demo_tokenizer_dir, strategy="linear", mask="all")


@pytest.fixture(scope="module")
def dataset(bestfit) -> PackedDataset:
    return PackedDataset(bestfit)


def stored_rows(out: Path) -> np.ndarray:
    """Every stored row (L+1 tokens), shard after shard, read with plain numpy."""
    shards = sorted((out / "shards").iterdir())
    return np.concatenate([np.load(shard / "tokens.npy") for shard in shards])


def rows_of(batch: dict) -> list[bytes]:
    """The stored rows a batch was built from, by their L inputs (`inputs_of` of the stored rows)."""
    return [row.numpy().astype(np.uint16).tobytes() for row in batch["input_ids"]]


def inputs_of(rows: np.ndarray) -> list[bytes]:
    return [row[:-1].tobytes() for row in rows]


def global_steps(out_or_ds, batch_size: int, world_size: int, steps: int | None = None, state=None, **kw):
    """Run every rank of a world; return each step's global batch (ranks concatenated) and the end state."""
    loaders = [PackedLoader(out_or_ds, batch_size, rank=r, world_size=world_size, **kw) for r in range(world_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    per_rank = [list(itertools.islice(iter(loader), steps)) for loader in loaders]
    assert len({len(batches) for batches in per_rank}) == 1  # every rank takes the same number of steps
    merged = [sum((rows_of(batches[s]) for batches in per_rank), []) for s in range(len(per_rank[0]))]
    assert len({json.dumps(loader.state_dict()) for loader in loaders}) == 1
    return merged, loaders[0].state_dict()


# --- the dataset ------------------------------------------------------------------------------------


def test_dataset_is_the_concatenation_of_all_shards(bestfit, dataset):
    rows = stored_rows(bestfit)
    shifted = PackedDataset(bestfit, label_layout="shifted")
    assert len(dataset.output.shards) == 3
    assert len(dataset) == len(rows) == json.loads((bestfit / "dataset.json").read_text())["rows"]
    for index in [0, int(dataset.output.row_offsets[1]) - 1, int(dataset.output.row_offsets[1]), len(rows) - 1, -1]:
        mask = dataset.output.row(index % len(rows)).loss_mask
        targets = np.where(mask > 0, rows[index][1:].astype(np.int64), -100)
        item = dataset[index]
        assert item.keys() == {"input_ids", "labels", "shift_labels"}
        assert item["input_ids"].dtype == item["labels"].dtype == item["shift_labels"].dtype == torch.int64
        assert item["input_ids"].tolist() == rows[index][:-1].tolist()
        assert item["shift_labels"].tolist() == targets.tolist()
        assert item["labels"].tolist() == [-100] + targets[:-1].tolist()  # aligned with input_ids: HF shifts them
        item = shifted[index]
        assert item["input_ids"].dtype == torch.int64 and item["loss_mask"].dtype == torch.float32
        assert item["input_ids"].tolist() == rows[index][:-1].tolist()
        assert item["labels"].tolist() == rows[index][1:].tolist()
        assert item["loss_mask"].tolist() == mask.tolist()
    with pytest.raises(IndexError):
        dataset[len(rows)]


# --- ranks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_ranks_are_disjoint_and_cover_the_epoch(bestfit, dataset, world_size, drop_last):
    batch_size = 5
    global_batch = batch_size * world_size
    loaders = [PackedLoader(dataset, batch_size, rank=r, world_size=world_size, seed=3, drop_last=drop_last)
               for r in range(world_size)]
    per_rank = [[rows_of(batch) for batch in loader] for loader in loaders]
    steps = len(dataset) // global_batch + (0 if drop_last or len(dataset) % global_batch == 0 else 1)
    assert [len(batches) for batches in per_rank] == [steps] * world_size == [len(loaders[0])] * world_size
    seen = Counter(row for batches in per_rank for batch in batches for row in batch)
    stored = Counter(inputs_of(stored_rows(bestfit)))
    if drop_last:
        assert all(len(batch) == batch_size for batches in per_rank for batch in batches)
        assert sum(seen.values()) == steps * global_batch and len(dataset) - steps * global_batch < global_batch
        assert not seen - stored  # no row twice, nothing foreign
    else:
        assert seen == stored  # every row exactly once across all ranks
        tail = [len(batches[-1]) for batches in per_rank]
        assert max(tail) - min(tail) <= 1
    assert all(loader.state_dict()["epoch"] == 1 and loader.state_dict()["rows_consumed"] == 0 for loader in loaders)


def test_epochs_are_new_seeded_orders(dataset):
    first = [rows_of(b) for b in PackedLoader(dataset, 4, seed=0, drop_last=False)]
    again = [rows_of(b) for b in PackedLoader(dataset, 4, seed=0, drop_last=False)]
    loader = PackedLoader(dataset, 4, seed=0, drop_last=False)
    list(loader)
    second = [rows_of(b) for b in loader]
    assert first == again and first != second and sorted(sum(first, [])) == sorted(sum(second, []))
    assert first != [rows_of(b) for b in PackedLoader(dataset, 4, seed=1, drop_last=False)]
    in_order = [rows_of(b) for b in PackedLoader(dataset, 4, shuffle=False, drop_last=False)]
    assert sum(in_order, []) == inputs_of(stored_rows(dataset.output.out_dir))


def test_bad_arguments_are_refused(dataset):
    with pytest.raises(ConfigError, match="0 <= rank < world_size"):
        PackedLoader(dataset, 4, rank=2, world_size=2)
    with pytest.raises(ConfigError, match=f"has {len(dataset)} rows, fewer than one global batch"):
        PackedLoader(dataset, len(dataset) + 1)
    with pytest.raises(ConfigError, match=re.escape("label_layout 'torch' is not one of hf, shifted")):
        PackedLoader(dataset, 4, label_layout="torch")  # type: ignore[arg-type]


# --- resume -----------------------------------------------------------------------------------------


CUTS = sorted(random.Random(5).sample(range(1, 40), 4))


@pytest.mark.parametrize("cut", CUTS)
def test_resume_gives_the_batches_an_uninterrupted_run_gives(dataset, cut):
    steps_per_epoch = len(PackedLoader(dataset, 12))
    total = cut + 2 * steps_per_epoch // 3  # the resumed part crosses an epoch boundary for late cuts
    reference = []
    loader = PackedLoader(dataset, 12, seed=7)
    while len(reference) < total:
        reference += [rows_of(b) for b in loader]
    interrupted = PackedLoader(dataset, 12, seed=7)
    taken = []
    while len(taken) < cut:
        for batch in interrupted:
            taken.append(rows_of(batch))
            if len(taken) == cut:
                break  # abandons a loop whose thread has prefetched further; the state must not count that
    state = json.loads(json.dumps(interrupted.state_dict()))  # a checkpoint survives serialisation
    resumed = PackedLoader(dataset, 12, seed=999)  # the saved seed wins
    resumed.load_state_dict(state)
    rest = []
    while len(rest) < total - cut:
        rest += [rows_of(b) for b in resumed]
    assert taken + rest[: total - cut] == reference[:total]


@pytest.mark.parametrize(("before", "after"), [((2, 6), (3, 4)), ((3, 4), (1, 12)), ((8, 1), (2, 4))])
def test_resume_with_another_world_size_keeps_the_global_batches(dataset, before, after):
    (w1, b1), (w2, b2) = before, after
    global_batch = w1 * b1
    reference, _ = global_steps(dataset, global_batch, 1, steps=9, seed=11)
    head, state = global_steps(dataset, b1, w1, steps=4, seed=11)
    tail, _ = global_steps(dataset, b2, w2, steps=5, state=state, seed=11)
    assert head + tail == reference
    assert state["rows_consumed"] == 4 * global_batch


def test_state_of_another_output_is_refused(dataset, linear):
    state = PackedLoader(linear, 4).state_dict()
    with pytest.raises(ResumeError, match="belongs to another output"):
        PackedLoader(dataset, 4).load_state_dict(state)


# --- segments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["bestfit", "linear"])
def test_position_ids_and_cu_seqlens_follow_the_stored_pieces(request, strategy):
    data = PackedDataset(request.getfixturevalue(strategy))
    assert len(data.output.shards) == 3  # the batches below cross shard boundaries
    batches = list(PackedLoader(data, 16, shuffle=False, drop_last=False, segments=True))
    for number, batch in enumerate(batches):
        expected_cu, expected_positions = [0], []
        for index in range(number * 16, min(len(data), (number + 1) * 16)):
            ends = [min(int(end), SEQ) for end in np.cumsum(data.segment_lengths(index))]
            pieces = [b - a for a, b in zip([0] + ends, ends) if b > a] + ([SEQ - ends[-1]] if ends[-1] < SEQ else [])
            for piece in pieces:
                expected_cu.append(expected_cu[-1] + piece)
                expected_positions += list(range(piece))
            if strategy == "bestfit":  # the label that predicts a piece's BOS is never trained
                assert all(data[index]["shift_labels"][end - 1] == -100 for end in ends[:-1])
                assert all(data[index]["labels"][end] == -100 for end in ends[:-1] if end < SEQ)
        assert batch["cu_seqlens"].dtype == torch.int32
        assert batch["cu_seqlens"].tolist() == expected_cu
        assert batch["position_ids"].flatten().tolist() == expected_positions
        assert batch["max_seqlen"] == max(np.diff(expected_cu))


@pytest.mark.parametrize("label_layout", ["hf", "shifted"])
def test_device_path_builds_the_same_batch_as_the_host_path(dataset, label_layout):
    """The copy-then-widen path used for CUDA, run on the CPU (no GPU here), against the host path."""
    loader = PackedLoader(dataset, 8, segments=True, label_layout=label_layout)
    step = next(loader._steps())
    slot = loader._new_slot()
    cu_seqlens = loader._fill(slot, step)
    on_host, via_device = loader._widen_on_host(slot, 8, cu_seqlens), loader._to_device(slot, 8, cu_seqlens)
    assert on_host.keys() == via_device.keys()
    for name, value in on_host.items():
        if isinstance(value, int):
            assert via_device[name] == value
        else:
            assert value.dtype == via_device[name].dtype and torch.equal(value, via_device[name]), name


# --- mixtures ---------------------------------------------------------------------------------------


def test_mixture_follows_the_weights_and_is_deterministic(bestfit, linear):
    weights = {bestfit: 0.7, linear: 0.3}
    steps, batch_size = 60, 40
    mixture = MixtureLoader(weights, batch_size, seed=4)
    batches = [rows_of(b) for b in itertools.islice(mixture, steps)]
    n = steps * batch_size
    drawn = mixture.state_dict()["drawn"]
    assert sum(drawn) == n
    assert abs(drawn[0] / n - 0.7) <= 4 * math.sqrt(0.7 * 0.3 / n)  # 4 sigma of a binomial
    from_linear = Counter(inputs_of(stored_rows(linear)))
    assert sum(from_linear[row] for batch in batches for row in batch) >= drawn[1]
    again = MixtureLoader(weights, batch_size, seed=4)
    assert [rows_of(b) for b in itertools.islice(again, steps)] == batches
    assert mixture.epochs_seen() == {str(bestfit): drawn[0] / len(PackedDataset(bestfit)),
                                     str(linear): drawn[1] / len(PackedDataset(linear))}
    other = MixtureLoader(weights, batch_size, seed=5)
    assert [rows_of(b) for b in itertools.islice(other, steps)] != batches


def test_mixture_resumes_exactly_across_world_sizes(bestfit, linear):
    weights = {bestfit: 2.0, linear: 1.0}
    reference = [rows_of(b) for b in itertools.islice(MixtureLoader(weights, 12, seed=8), 10)]
    ranks = [MixtureLoader(weights, 6, rank=r, world_size=2, seed=8) for r in range(2)]
    head = [sum(pair, []) for pair in zip(*[[rows_of(b) for b in itertools.islice(m, 4)] for m in ranks])]
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict()
    resumed = [MixtureLoader(weights, 4, rank=r, world_size=3, seed=0) for r in range(3)]
    for loader in resumed:
        loader.load_state_dict(state)
    tail = [sum(group, []) for group in zip(*[[rows_of(b) for b in itertools.islice(m, 6)] for m in resumed])]
    assert head + tail == reference


def test_each_mixture_dataset_cycles_through_its_own_permutations():
    draws = MixtureDraws([7, 50], [0.5, 0.5], seed=1, stream=2, fingerprints=["a", "b"])
    steps = list(itertools.islice(draws.steps(0, [0, 0], 10), 10))
    small = sum((rows[which == 0].tolist() for _, _, which, rows in steps), [])
    assert steps[-1][1][0] == len(small) >= 21
    passes = [small[i : i + 7] for i in range(0, 21, 7)]
    assert all(sorted(p) == list(range(7)) for p in passes) and passes[0] != passes[1]
    assert draws.choices(3, 5).tolist() == draws.choices(0, 8).tolist()[3:]  # independent of batch boundaries


# --- refusals ---------------------------------------------------------------------------------------


def test_mismatched_tokenizer_is_refused(bestfit, demo_tokenizer_dir, tmp_path):
    fingerprint = json.loads((bestfit / "dataset.json").read_text())["tokenizer"]["fingerprint"]
    assert PackedDataset(bestfit, expect_tokenizer=fingerprint).tokenizer_fingerprint == fingerprint
    PackedDataset(bestfit, expect_tokenizer=str(demo_tokenizer_dir))
    with pytest.raises(TokenizerError, match=re.escape(f"packed with tokenizer '{demo_tokenizer_dir}' (fingerprint {fingerprint[:12]}), not fingerprint 000000000000")):
        PackedDataset(bestfit, expect_tokenizer="0" * 64)
    gone = tmp_path / "gone" / "tokenizer"
    with pytest.raises(TokenizerError) as refused:
        PackedDataset(bestfit, expect_tokenizer=str(gone))
    assert str(refused.value) == (
        f"tokenizer '{gone}': no such folder. Pass a folder holding tokenizer files (tokenizer.json, or vocab.json + "
        "merges.txt) or a model-hub name. expect_tokenizer takes the folder of a tokenizer, or the fingerprint this "
        f"output records, which loads none: expect_tokenizer='{fingerprint}'")
    other = build_demo_tokenizer(tmp_path / "other-tokenizer", vocab_size=400)
    with pytest.raises(TokenizerError, match=f"not tokenizer '{re.escape(str(other))}' .*Pack the data again"):
        PackedDataset(bestfit, expect_tokenizer=str(other))


@pytest.fixture()
def damaged(bestfit, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(bestfit, copy)
    return copy


def test_missing_shard_is_refused(damaged):
    shutil.rmtree(damaged / "shards" / "00001")
    with pytest.raises(OutputError, match=re.escape(f"{damaged / 'shards' / '00001'}: shard missing (dataset.json lists it)")):
        PackedDataset(damaged)


def test_truncated_array_is_refused(damaged):
    path = damaged / "shards" / "00002" / "tokens.npy"
    size = path.stat().st_size
    os.truncate(path, size - 10)
    with pytest.raises(OutputError, match=re.escape(f"{path}: {size - 10} bytes, expected {size}") + ".*truncated"):
        PackedDataset(damaged)


def test_an_error_in_the_background_thread_reaches_the_training_loop(damaged):
    loader = PackedLoader(damaged, 4, shuffle=False)
    path = damaged / "shards" / "00000" / "tokens.npy"
    os.truncate(path, 200)  # shrinks under a running job
    with pytest.raises(OutputError, match=re.escape(f"{path}: short read at byte") + ".*changed while reading"):
        next(iter(loader))
    assert loader.state_dict()["rows_consumed"] == 0


def test_incomplete_or_inconsistent_dataset_json_is_refused(damaged):
    (damaged / "shards" / "00000" / "loss_mask.npy").unlink()
    with pytest.raises(OutputError, match="loss_mask.npy: missing; the output is incomplete"):
        PackedDataset(damaged)
    dataset = json.loads((damaged / "dataset.json").read_text())
    dataset["shards"][0]["files"]["tokens.npy"]["shape"][1] += 1
    del dataset["rows"]
    (damaged / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(OutputError, match="dataset.json: lacks rows; the output is incomplete"):
        PackedDataset(damaged)
    dataset["rows"] = sum(shard["rows"] for shard in dataset["shards"])
    (damaged / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(OutputError, match=r"tokens.npy: dataset.json declares shape \[\d+, 66\] uint16"):
        PackedDataset(damaged)
    (damaged / "dataset.json").unlink()
    with pytest.raises(OutputError, match="no dataset.json"):
        PackedDataset(damaged)


def test_without_torch_the_module_imports_and_construction_asks_to_install_it(bestfit):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import packsft.loader as loader\n"
        "from packsft.errors import MissingDependencyError\n"
        "try:\n    loader.PackedDataset(sys.argv[1])\n"
        "except MissingDependencyError as exc:\n    print(type(exc).__mro__[1].__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(bestfit)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], check=True)
    assert result.stdout == ("PacksftError the packsft loader needs PyTorch, which is not installed: "
                             "pip install -e '.[torch]' in the packsft checkout, or pip install torch\n")


# --- the README's training loop ---------------------------------------------------------------------


@pytest.mark.slow
def test_readme_training_example_runs(demo_data, demo_tokenizer_dir, tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Train with the loader") : text.index("## Benchmark")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    pack(demo_data, tmp_path / "demo-out" / "bestfit", demo_tokenizer_dir, seq_length=512)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    losses = namespace["losses"]
    assert len(losses) >= 2 and all(math.isfinite(loss) for loss in losses)
