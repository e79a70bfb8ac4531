"""Topology-aware rows: `--pad-multiple N` pads every segment to a multiple of N (untrained, its stored length
includes the pads) and `--max-segments K` caps the segments of a row; packers, chunks, outputs, verify and the
loader's cu_seqlens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from packsft import PackConfig, PackedOutput
from packsft.cli import main
from packsft.demo import demo_conversations
from packsft.errors import ConfigError
from packsft.pack.bins import pack_aligned, pack_bestfit, slot_lengths
from packsft.pack.rows import build_chunks
from packsft.pack.table import PieceTable
from packsft.run import run_pack
from packsft.verify import verify_output
from packsft.write.layout import Topology
from tests.helpers import PAD, load_array, rewrite_array, write_conversations

SEQ, MULTIPLE, MOST = 64, 8, 2


def rows_of(packing) -> list[list[int]]:
    return [packing.order[a:b].tolist() for a, b in zip(packing.row_offsets[:-1], packing.row_offsets[1:])]


def test_slot_lengths_round_up_to_the_multiple():
    assert slot_lengths(np.array([1, 8, 9, 16, 17]), 8).tolist() == [8, 8, 16, 16, 24]
    assert slot_lengths(np.array([3, 5]), 1).tolist() == [3, 5]


def test_bestfit_opens_a_row_when_the_best_one_holds_max_segments():
    # Without a limit 3 + 3 + 2 + 2 fill one row of 10; with K=2 the third piece needs a new row.
    assert rows_of(pack_bestfit(np.array([3, 3, 2, 2]), 10)) == [[0, 1, 2, 3]]
    assert rows_of(pack_bestfit(np.array([3, 3, 2, 2]), 10, max_segments=2)) == [[0, 1], [2, 3]]
    assert rows_of(pack_aligned(np.array([3, 3, 2, 2]), 10, max_segments=3)) == [[0, 1, 2], [3]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.sampled_from([1, 2, 4, 8]),
       st.none() | st.integers(1, 5), st.sampled_from([pack_bestfit, pack_aligned]))
def test_every_piece_placed_once_rows_fit_and_hold_at_most_k(lengths, multiple, most, packer):
    slots = slot_lengths(np.array(lengths), multiple)
    packing = packer(slots, 40, most)
    assert sorted(packing.order.tolist()) == list(range(len(lengths)))
    for row in rows_of(packing):
        assert 1 <= len(row) <= (most or len(lengths)) and slots[row].sum() <= 40


def test_chunks_pad_each_segment_untrained():
    ids = np.arange(10, 23, dtype=np.uint32)  # pieces of 5, 3 and 5 tokens, every token but the first trained
    flags = np.ones(13, np.uint8)
    flags[[0, 5, 8]] = 0
    pieces = PieceTable(ids, flags, np.array([0, 5, 8, 13]), np.array([0, 1, 2]))
    slots = slot_lengths(pieces.lengths, 4)
    chunks = build_chunks(pieces, pack_bestfit(slots, 16 + 1, 2), 16, PAD, slots)
    assert chunks.segment_lengths.tolist() == [8, 8, 4]
    assert chunks.row_segments.tolist() == [0, 2, 3]
    assert chunks.tokens[0].tolist() == [10, 11, 12, 13, 14, PAD, PAD, PAD, 18, 19, 20, 21, 22, PAD, PAD, PAD, PAD]
    assert chunks.tokens[1].tolist() == [15, 16, 17, PAD] + [PAD] * 13
    # Labels of pads are never trained.
    labels = np.concatenate([[0], chunks.loss_mask[0]])
    assert labels.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]


# --- whole outputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("topology-data")
    write_conversations(folder / "demo.parquet", demo_conversations())
    return folder


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, data_dir, demo_tokenizer_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("topology")
    return {strategy: run_pack(data_dir, folder / strategy, PackConfig(
        tokenizer=str(demo_tokenizer_dir), seq_length=SEQ, strategy=strategy, pad_multiple=MULTIPLE,
        max_segments=MOST), quiet=True).out_dir for strategy in ("bestfit", "aligned")}


@pytest.fixture(params=["bestfit", "aligned"])
def packed(request, outputs) -> Path:
    return outputs[request.param]


def test_outputs_keep_both_invariants_and_say_so(packed):
    output = PackedOutput(packed)
    assert Topology.of(output.dataset) == Topology(MULTIPLE, MOST) and Topology(MULTIPLE, MOST).cu_seqlens_width() == 3
    lengths, offsets = load_array(packed, 0, "segment_lengths.npy"), load_array(packed, 0, "row_segments.npy")
    assert (lengths % MULTIPLE == 0).all() and np.diff(offsets).max() <= MOST
    assert not verify_output(packed, deep=True)
    pad = output.dataset["tokenizer"]["special_ids"]["pad"]
    padded_segments = 0
    for index in range(len(output)):
        row = output.row(index)
        labels = np.concatenate([[0], row.loss_mask])
        for start, length in zip(row.segment_starts.tolist(), row.segment_lengths.tolist()):
            segment = row.tokens[start : start + length]
            real = len(segment) - int(np.argmax(segment[::-1] != pad))  # the piece ends before its pads
            padded_segments += real < length
            assert not labels[start + real : start + length].any()  # pads never trained
            assert not labels[start]  # nor the label at a segment start
    assert padded_segments  # the demo's pieces are not all multiples of 8


def test_verify_names_a_broken_multiple_and_too_many_segments(outputs, tmp_path):
    packed = outputs["bestfit"]  # rows of two segments
    out = Path(shutil.copytree(packed, tmp_path / "out"))
    lengths = load_array(out, 0, "segment_lengths.npy")
    lengths[0] -= 1  # the first segment of row 0 becomes 8k-1 long
    rewrite_array(out, 0, "segment_lengths.npy", lengths)
    messages = [p.message for p in verify_output(out)]
    assert f"a segment length is not a multiple of the pad multiple {MULTIPLE}" in messages
    shutil.rmtree(out)
    out = Path(shutil.copytree(packed, tmp_path / "out"))
    dataset = PackedOutput(out).dataset
    dataset["config"]["max_segments"] = 1
    (out / "dataset.json").write_text(json.dumps(dataset))
    assert "row holds more than max_segments 1 segments" in [p.message for p in verify_output(out)]
    shutil.rmtree(out)  # damaged on purpose: the suite's every-output-verifies check must not read it


def test_loader_cu_seqlens_keep_the_padded_boundaries(packed):
    pytest.importorskip("torch", reason="the loader needs PyTorch (pip install -e '.[torch]')")
    from packsft.loader import PackedLoader

    batch = next(iter(PackedLoader(packed, 4, shuffle=False, segments=True)))
    cu = batch["cu_seqlens"].numpy()
    assert (cu % MULTIPLE == 0).all()  # every segment, and the padding after a row's last one (N divides L)
    positions = batch["position_ids"].numpy().reshape(-1)
    assert (positions[cu[:-1]] == 0).all()
    # A row's labels: never at a pad, never across a boundary.
    labels, ids = batch["labels"].numpy().reshape(-1), batch["input_ids"].numpy().reshape(-1)
    pad = PackedOutput(packed).dataset["tokenizer"]["special_ids"]["pad"]
    assert not (labels[ids == pad] != -100).any()


def test_config_refuses_what_cannot_hold(demo_tokenizer_dir):
    with pytest.raises(ConfigError, match="seq_length 100 is not a multiple of pad_multiple 16.*--seq-length 96"):
        PackConfig(seq_length=100, pad_multiple=16)
    with pytest.raises(ConfigError, match="--pad-multiple and --max-segments do not apply to strategy linear"):
        PackConfig(strategy="linear", pad_multiple=2, max_segments=4)
    with pytest.raises(ConfigError, match="max_segments must be an integer >= 1"):
        PackConfig(max_segments=0)


def test_cli_flags_reach_dataset_json(data_dir, demo_tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["pack", str(data_dir), str(out), "--tokenizer", str(demo_tokenizer_dir),
                                       "--seq-length", "64", "--pad-multiple", "4", "--max-segments", "3", "-q"])
    assert result.exit_code == 0, result.output
    config = PackedOutput(out).dataset["config"]
    assert (config["pad_multiple"], config["max_segments"]) == (4, 3)


def test_default_rows_keep_their_fingerprint():
    from packsft.config import bytes_config

    assert "pad_multiple" not in bytes_config(PackConfig().to_dict())
    assert bytes_config(PackConfig(pad_multiple=2).to_dict())["pad_multiple"] == 2
