"""`packsft verify`: passes on sound outputs of every strategy and names each corruption it is shown."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from packsft import PackConfig
from packsft.cli import main
from packsft.run import run_pack
from packsft.verify import check_output, verify_output
from tests.helpers import assert_output_verifies, conv, load_array, rewrite_array, write_conversations

STRATEGIES = ("linear", "aligned", "bestfit")
QA = [("What is two plus two?", "Four."), ("Name a colour.", "Blue, like the sky."), ("Why?", "Because. " * 9)]


def records(seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(14):
        turns = [("system", "Be brief.")] if i % 4 == 0 else []
        for _ in range(rng.choice([1, 1, 2, 3])):
            question, answer = rng.choice(QA)
            turns += [("user", question), ("assistant", answer)]
        out.append(conv(*turns, source=rng.choice(["a", "b"])))
    out.append({"messages": [], "source": "a"})  # one reject
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("verify-data")
    write_conversations(folder / "part-0.parquet", records(0))
    write_conversations(folder / "part-1.parquet", records(1))
    return folder


@pytest.fixture(scope="module")
def packed(tmp_path_factory, data_dir, demo_tokenizer_dir) -> dict[str, Path]:
    outputs = {}
    for strategy in STRATEGIES:
        for output_format in ("npy", "both", "parquet"):
            out = tmp_path_factory.mktemp("verify-out") / f"{strategy}-{output_format}"
            config = PackConfig(tokenizer=str(demo_tokenizer_dir), strategy=strategy, seq_length=48,
                                output_format=output_format)
            run_pack(data_dir, out, config, quiet=True)
            outputs[f"{strategy}-{output_format}"] = out
    return outputs


def copy_of(packed: dict[str, Path], key: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(packed[key], tmp_path / key))


def messages(out: Path) -> list[str]:
    return [str(problem) for problem in verify_output(out)]


@pytest.mark.parametrize("output_format", ["npy", "both", "parquet"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sound_outputs_verify_clean_including_deep(packed, strategy, output_format):
    report = check_output(packed[f"{strategy}-{output_format}"], deep=True)
    assert report.problems == [] and report.notes == []
    assert report.shards == 2 and report.repacked == 2 and report.rows > 2


def test_cli_prints_a_one_line_summary_and_exit_0(packed):
    result = CliRunner().invoke(main, ["verify", str(packed["bestfit-npy"])])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("ok: ")
    assert "2 shard(s)" in result.output and "8 files match their sha256" in result.output


def test_cli_lists_problems_and_exits_1(packed, tmp_path):
    out = copy_of(packed, "aligned-npy", tmp_path)
    (out / "shards" / "00001" / "loss_mask.npy").unlink()
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 1
    assert "shards/00001/loss_mask.npy: missing\n" in result.output
    assert "1 problem(s) found in" in result.output and "Traceback" not in result.output


def test_cli_on_a_folder_that_does_not_exist(tmp_path):
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "nope")])
    assert result.exit_code == 1 and result.output.strip() == (
        f"Error: {tmp_path / 'nope'}: no such folder. Pass the OUT_DIR of a `packsft pack` run")


# --- corruptions: each is named ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_any_flipped_byte_in_any_array_file_is_caught(packed, tmp_path, strategy):
    out = copy_of(packed, f"{strategy}-both", tmp_path)
    files = sorted(p for p in (out / "shards").rglob("*") if p.suffix in (".npy", ".parquet"))
    rng = random.Random(strategy)
    for _ in range(60):
        path = rng.choice(files)
        original = path.read_bytes()
        data = bytearray(original)
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        found = messages(out)
        rel = path.relative_to(out).as_posix()
        assert f"{rel}: sha256 differs from the manifest: the file changed after packing" in found, (rel, at, found)
        path.write_bytes(original)
    assert messages(out) == []


def test_truncated_file(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    path = out / "shards" / "00000" / "tokens.npy"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    assert messages(out) == [
        f"shards/00000/tokens.npy: is {size - 10:,} bytes, the manifest says {size} (truncated or extended)"]


def test_missing_shard(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    shutil.rmtree(out / "shards" / "00001")
    assert messages(out) == ["shards/00001: missing shard: listed in dataset.json, not on disk"]


def test_missing_dataset_json_means_incomplete(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    (out / "dataset.json").unlink()
    assert messages(out) == ["dataset.json: missing (the pack did not finish; rerun it)"]


def test_manifest_whose_hash_disagrees_with_dataset_json(packed, tmp_path):
    out = copy_of(packed, "aligned-npy", tmp_path)
    path = out / "shards" / "00000" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["loss_mask.npy"]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    assert messages(out) == ["shards/00000/manifest.json: files disagrees with dataset.json (loss_mask.npy)"]


def test_edited_manifest_counters_and_stats(packed, tmp_path):
    out = copy_of(packed, "aligned-npy", tmp_path)
    path = out / "shards" / "00001" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counters"]["conversations_read"] += 1
    path.write_text(json.dumps(manifest))
    assert messages(out) == ["dataset.json: counters are not the sum of the shard manifests' counters"]
    dataset = json.loads((out / "dataset.json").read_text())
    dataset["stats"]["fill"] = 0.99
    (out / "dataset.json").write_text(json.dumps(dataset))
    assert "dataset.json: stats do not follow from its counters (edited?)" in messages(out)


def test_dtype_mismatch_with_hashes_fixed_up(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    rewrite_array(out, 0, "tokens.npy", load_array(out, 0, "tokens.npy").astype(np.uint32))
    assert messages(out) == ["shards/00000/tokens.npy: dtype is uint32, the format stores uint16"]


def test_object_array_is_refused_never_unpickled(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    rewrite_array(out, 1, "segment_lengths.npy", np.array([1, "x"], dtype=object))
    assert messages(out) == ["shards/00001/segment_lengths.npy: holds pickled Python objects: refused, never unpickled"]


def padded_row(out: Path, shard: int) -> tuple[int, int]:
    """(row, last used position) of a row with padding."""
    lengths, offsets = load_array(out, shard, "segment_lengths.npy"), load_array(out, shard, "row_segments.npy")
    used = [int(lengths[a:b].sum()) for a, b in zip(offsets[:-1], offsets[1:])]
    row = next(r for r, u in enumerate(used) if u < 48 + 1 - 1)
    return row, used[row]


def test_trained_pad_with_hashes_fixed_up(packed, tmp_path):
    out = copy_of(packed, "aligned-npy", tmp_path)
    row, used = padded_row(out, 1)
    mask = load_array(out, 1, "loss_mask.npy").copy()
    mask[row, used] = 1  # the label tokens[row, used + 1] is a pad
    rewrite_array(out, 1, "loss_mask.npy", mask)
    first = json.loads((out / "dataset.json").read_text())["shards"][0]["rows"]
    assert messages(out) == [
        f"shards/00001/loss_mask.npy row {row} (chunk {first + row}): a pad position is trained",
        f"shards/00001/manifest.json: counters.trained_tokens_kept is {mask.sum() - 1}, the arrays hold {mask.sum()}",
    ]


def test_pad_position_holding_a_token(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    row, used = padded_row(out, 0)
    tokens = load_array(out, 0, "tokens.npy").copy()
    tokens[row, -1] = 7
    rewrite_array(out, 0, "tokens.npy", tokens)
    dataset = json.loads((out / "dataset.json").read_text())
    pad = dataset["tokenizer"]["special_ids"]["pad"]
    assert messages(out) == [f"shards/00000/tokens.npy row {row} (chunk {row}): position after the row's "
                             f"segments does not hold the pad id {pad}"]


@pytest.mark.parametrize("strategy", ["aligned", "bestfit"])
def test_row_not_starting_at_bos_with_hashes_fixed_up(packed, tmp_path, strategy):
    out = copy_of(packed, f"{strategy}-npy", tmp_path)
    tokens = load_array(out, 1, "tokens.npy").copy()
    tokens[2, 0] = tokens[2, 1]
    rewrite_array(out, 1, "tokens.npy", tokens)
    bos = json.loads((out / "dataset.json").read_text())["tokenizer"]["special_ids"]["bos"]
    first = json.loads((out / "dataset.json").read_text())["shards"][0]["rows"]
    assert messages(out) == [
        f"shards/00001/tokens.npy row 2 (chunk {first + 2}): row does not start with BOS (id {bos})",
        "shards/00001/manifest.json: counters.bos_starts is "
        f"{len(tokens)}, the arrays hold {len(tokens) - 1}",
    ]


def test_segment_not_starting_at_bos_and_trained_segment_start(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    lengths, offsets = load_array(out, 0, "segment_lengths.npy"), load_array(out, 0, "row_segments.npy")
    row = next(r for r in range(len(offsets) - 1) if offsets[r + 1] - offsets[r] >= 2)
    start = int(lengths[offsets[row]])  # column of the row's second segment
    tokens, mask = load_array(out, 0, "tokens.npy").copy(), load_array(out, 0, "loss_mask.npy").copy()
    tokens[row, start] = tokens[row, start + 1]
    rewrite_array(out, 0, "tokens.npy", tokens)
    assert [str(p) for p in verify_output(out) if p.row is not None] == [
        f"shards/00000/tokens.npy row {row} (chunk {row}): a segment does not start with BOS (id {tokens[0, 0]})"]
    mask[row, start - 1] = 1
    rewrite_array(out, 0, "loss_mask.npy", mask)
    assert f"shards/00000/loss_mask.npy row {row} (chunk {row}): the label at a segment start is trained" in messages(out)


def test_inconsistent_segments(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    offsets = load_array(out, 0, "row_segments.npy").copy()
    offsets[-1] += 1
    rewrite_array(out, 0, "row_segments.npy", offsets)
    assert messages(out) == [f"shards/00000/row_segments.npy: ends at {offsets[-1]}, but segment_lengths holds "
                             f"{offsets[-1] - 1} segments"]


def test_linear_rows_must_share_their_boundary_token(packed, tmp_path):
    out = copy_of(packed, "linear-npy", tmp_path)
    tokens = load_array(out, 0, "tokens.npy").copy()
    tokens[1, 0] = (int(tokens[1, 0]) + 1) % 100
    rewrite_array(out, 0, "tokens.npy", tokens)
    assert [str(p) for p in verify_output(out) if p.row is not None] == [
        "shards/00000/tokens.npy row 1 (chunk 1): a linear row does not start with the previous row's last token"]


def test_token_beyond_the_vocabulary(packed, tmp_path):
    out = copy_of(packed, "aligned-npy", tmp_path)
    tokens = load_array(out, 0, "tokens.npy").copy()
    tokens[0, 3] = 60000
    rewrite_array(out, 0, "tokens.npy", tokens)
    vocab = json.loads((out / "dataset.json").read_text())["tokenizer"]["vocab_size"]
    assert messages(out) == [f"shards/00000/tokens.npy row 0 (chunk 0): token id >= vocabulary size {vocab}"]


def test_deep_catches_a_consistent_reordering_only_a_fresh_pack_reveals(packed, tmp_path):
    out = copy_of(packed, "aligned-npy", tmp_path)
    tokens, mask = load_array(out, 0, "tokens.npy"), load_array(out, 0, "loss_mask.npy")
    lengths, offsets = load_array(out, 0, "segment_lengths.npy"), load_array(out, 0, "row_segments.npy")
    order = [1, 0, *range(2, len(tokens))]
    rows = [lengths[offsets[r]:offsets[r + 1]] for r in order]
    rewrite_array(out, 0, "tokens.npy", tokens[order])
    rewrite_array(out, 0, "loss_mask.npy", mask[order])
    rewrite_array(out, 0, "segment_lengths.npy", np.concatenate(rows).astype(np.int32))
    rewrite_array(out, 0, "row_segments.npy", np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64))
    assert verify_output(out) == []
    deep = [str(p) for p in verify_output(out, deep=True)]
    assert deep == [f"shards/00000/{name}: differs from a fresh pack of part-0.parquet (first at row 0)"
                    for name in ("tokens.npy", "loss_mask.npy")]  # rows 0 and 1 hold segments of equal lengths


def test_deep_fails_on_inputs_that_are_gone_unless_skips_are_allowed(packed, tmp_path, data_dir):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    dataset = json.loads((out / "dataset.json").read_text())
    dataset["data_dir"] = str(tmp_path / "moved")
    (out / "dataset.json").write_text(json.dumps(dataset))
    reasons = [f"deep check skipped for shard 0000{i}: input {tmp_path / 'moved' / f'part-{i}.parquet'} is gone"
               for i in (0, 1)]
    report = check_output(out, deep=True)
    assert report.repacked == 0 and report.skipped == 2 and report.notes == []
    assert [str(p) for p in report.problems] == [
        f"shards/0000{i}: {reason}. Run verify where the inputs and tokenizer are, or pass --allow-skip to accept "
        "units --deep cannot re-pack" for i, reason in enumerate(reasons)]
    report = check_output(out, deep=True, allow_skip=True)
    assert report.problems == [] and report.repacked == 0 and report.notes == reasons
    assert report.summary().endswith("segments consistent; 2 could not be re-packed (--allow-skip)")


def test_verify_helper_on_a_sound_output(packed):
    assert_output_verifies(packed["linear-both"], deep=True)


def test_rejects_jsonl_is_split_on_newlines_only(tmp_path, demo_tokenizer_dir):
    """Found by the fuzzer: an excerpt holding U+2028 is one JSON line (now written escaped, as JSON
    Lines readers that split on U+2028 expect), and verify counts it as one."""
    write_conversations(tmp_path / "d" / "x.parquet", [conv(("robot", "a\u2028b\x1cc\x85")), records(0)[0]])
    run_pack(tmp_path / "d", tmp_path / "out", PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=48,
                                                           max_reject_fraction=0.5), quiet=True)
    text = (tmp_path / "out" / "rejects.jsonl").read_text()
    assert "\\u2028" in text and "\u2028" not in text
    assert json.loads(text.splitlines()[0])["excerpt"].count("\u2028") == 1
    assert_output_verifies(tmp_path / "out")


def test_any_flipped_byte_in_a_manifest_is_caught(packed, tmp_path):
    out = copy_of(packed, "bestfit-npy", tmp_path)
    path = out / "shards" / "00001" / "manifest.json"
    original = path.read_bytes()
    # The tokenizer's path is where it was, no part of what the shard is (its fingerprint is): unchecked.
    text = original.decode()
    start = text.index('"tokenizer": "')
    path_line = range(start, text.index("\n", start))
    rng = random.Random(7)
    for at in rng.sample(range(len(original)), 150):
        data = bytearray(original)
        data[at] ^= 1 << rng.randrange(7)
        path.write_bytes(bytes(data))
        if at not in path_line:
            assert verify_output(out), (at, original[max(0, at - 30):at + 30])
    path.write_bytes(original)


def test_flipped_bytes_in_dataset_json_never_crash_verify(packed, tmp_path):
    """Without --deep, only metadata verify cannot check may change unnoticed: data_dir, packsft_version, the
    config's tokenizer path, and the tokenizer's name, file hashes and role ids (--deep compares the hashes and ids
    with the tokenizer itself; the name is a path, like data_dir)."""
    out = copy_of(packed, "bestfit-npy", tmp_path)
    path = out / "dataset.json"
    original = path.read_bytes()
    text = original.decode()
    start = text.index('\n  "tokenizer": {')
    tokenizer_block = range(start, text.index("\n  },", start))
    unchecked = [range(text.index(f'\n  "{key}"'), text.index("\n", text.index(f'\n  "{key}"') + 1))
                 for key in ("data_dir", "packsft_version")] + [tokenizer_block]
    path_at = text.index('\n    "tokenizer": "')
    unchecked.append(range(path_at, text.index("\n", path_at + 1)))
    rng = random.Random(8)
    for at in rng.sample(range(len(original)), 200):
        data = bytearray(original)
        data[at] ^= 1 << rng.randrange(7)
        path.write_bytes(bytes(data))
        if not any(at in span for span in unchecked):
            assert verify_output(out), (at, original[max(0, at - 30):at + 30])
        else:
            verify_output(out)
    path.write_bytes(original)


# --- --deep on units that are parts of a file, and on options that change how records read ---------------


def unit_bytes_for(path: Path, units: int) -> int:
    """A --unit-mib (in bytes) that cuts the parquet file at path into `units` units."""
    metadata = pq.ParquetFile(path).metadata
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    total = sum(g.column(c).total_compressed_size for g in groups for c in range(g.num_columns))
    return total // units + 1


def sharegpt_records(count: int) -> list[dict]:
    """ShareGPT-shaped records whose roles only --role-map person=user,robot=assistant makes known."""
    rng = random.Random(count)
    out = []
    for i in range(count):
        turns = [{"from": "Person", "value": f"Question {i}: {rng.choice(QA)[0]}"},
                 {"from": "robot", "value": f"Answer {i}. {rng.choice(QA)[1] * rng.randint(1, 3)}"}]
        out.append({"conversations": turns})
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deep_repacks_each_unit_of_a_file_cut_into_several(tmp_path, demo_tokenizer_dir, strategy):
    """One parquet file above the unit size is cut into units of row groups; --deep re-packs each unit
    from its own row groups (it once re-packed the whole file for each and reported false corruptions)."""
    path = write_conversations(tmp_path / "d" / "big.parquet", [r for seed in range(4) for r in records(seed)],
                               row_group_size=10)
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), strategy=strategy, seq_length=48, output_format="both")
    result = run_pack(tmp_path / "d", tmp_path / "out", config, quiet=True, unit_bytes=unit_bytes_for(path, 3))
    inputs = [shard["inputs"][0] for shard in result.dataset["shards"]]
    assert [(i["path"], i["row_groups"]) for i in inputs] == [("big.parquet", [0, 2]), ("big.parquet", [2, 4]),
                                                              ("big.parquet", [4, 6])]
    report = check_output(tmp_path / "out", deep=True, sample=3)
    assert [str(p) for p in report.problems] == [] and report.notes == []
    assert report.repacked == 3


def test_deep_repacks_with_the_role_map_of_the_pack(tmp_path, demo_tokenizer_dir):
    path = write_conversations(tmp_path / "d" / "chat.parquet", sharegpt_records(40), row_group_size=8)
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=48, role_map="person=user, robot=assistant")
    result = run_pack(tmp_path / "d", tmp_path / "out", config, quiet=True, unit_bytes=unit_bytes_for(path, 2))
    assert len(result.dataset["shards"]) == 2
    assert result.dataset["stats"]["conversations_packed"] == 40 and result.dataset["stats"]["records_rejected"] == 0
    report = check_output(tmp_path / "out", deep=True)
    assert [str(p) for p in report.problems] == [] and report.notes == [] and report.repacked == 2
