"""The held-out split (--eval-fraction, --eval-records): records chosen by the sha256 of their content go to
OUT_DIR/eval, a complete output of its own, and never to training; the choice does not depend on file names,
order, workers or reruns; verify, the loader and export read OUT_DIR/eval like any output.

Data: 40 JSON Lines conversations numbered in their question ("Question 7?"), in files of 10, packed with the
demo tokenizer; which records an output holds is read back from its decoded rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from packsft import PackConfig
from packsft.read.heldout import KEY_SPACE, RecordSplit, fraction_threshold, record_key, records_threshold
from packsft.run import merge, run_pack
from packsft.write.layout import DATASET_JSON, PackedOutput
from tests.helpers import cli_pack, error_line, output_arrays

SEQ = 64
RECORDS = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                         {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 3)}]} for i in range(40)]


def write_files(folder: Path, order: list[int], per_file: int = 10) -> Path:
    folder.mkdir(parents=True)
    for start in range(0, len(order), per_file):
        lines = "".join(json.dumps(RECORDS[i]) + "\n" for i in order[start:start + per_file])
        (folder / f"part-{start // per_file}.jsonl").write_text(lines)
    return folder


def questions(out: Path, tokenizer_dir: Path) -> list[int]:
    """The numbers of the questions the output's rows hold, sorted."""
    from transformers import AutoTokenizer

    hf, output = AutoTokenizer.from_pretrained(tokenizer_dir), PackedOutput(out)
    text = "".join(hf.decode(output.array(shard, "tokens").reshape(-1).tolist()) for shard in range(len(output.shards)))
    return sorted(int(n) for n in re.findall(r"Question (\d+)\?", text))


def smallest_keys(count: int) -> list[int]:
    return sorted(sorted(range(len(RECORDS)), key=lambda i: record_key(RECORDS[i]))[:count])


def pack(data: Path, out: Path, tokenizer_dir: Path, **options):
    split = {key: options.pop(key) for key in ("eval_fraction", "eval_records") if key in options}
    return run_pack(data, out, PackConfig(tokenizer=str(tokenizer_dir), seq_length=SEQ, **split), quiet=True,
                    **options)


def test_eval_records_go_to_their_own_output_and_never_to_training(tmp_path, demo_tokenizer_dir):
    data = write_files(tmp_path / "data", list(range(40)))
    result = pack(data, tmp_path / "out", demo_tokenizer_dir, eval_records=5)
    held = smallest_keys(5)
    assert questions(tmp_path / "out" / "eval", demo_tokenizer_dir) == held
    assert questions(tmp_path / "out", demo_tokenizer_dir) == [i for i in range(40) if i not in held]
    train, evaluation = result.dataset["stats"], result.eval.dataset["stats"]
    assert (train["conversations_read"], train["records_other_split"]) == (35, 5)
    assert (evaluation["conversations_read"], evaluation["records_other_split"]) == (5, 35)
    assert result.eval.dataset["config"]["split"] == "eval" and result.dataset["config"]["split"] == "train"


def test_the_split_is_the_same_for_other_files_order_workers_and_reruns(tmp_path, demo_tokenizer_dir):
    first = pack(write_files(tmp_path / "a", list(range(40))), tmp_path / "one", demo_tokenizer_dir,
                 eval_fraction=0.25)
    shuffled = pack(write_files(tmp_path / "b", list(range(39, -1, -1)), per_file=7), tmp_path / "two",
                    demo_tokenizer_dir, eval_fraction=0.25, workers=2)
    expected = [i for i in range(40) if record_key(RECORDS[i]) < fraction_threshold(0.25)]
    assert 0 < len(expected) < 40
    for out in (first.out_dir, shuffled.out_dir):
        assert questions(out / "eval", demo_tokenizer_dir) == expected
    again = pack(tmp_path / "a", tmp_path / "one", demo_tokenizer_dir, eval_fraction=0.25, workers=2)
    assert (again.packed, again.eval.packed, again.skipped, again.eval.skipped) == (0, 0, 4, 4)  # resumed
    before = output_arrays(tmp_path / "one"), output_arrays(tmp_path / "one" / "eval")
    overwritten = pack(tmp_path / "a", tmp_path / "one", demo_tokenizer_dir, eval_fraction=0.25, overwrite=True)
    assert overwritten.packed == overwritten.eval.packed == 4
    assert (output_arrays(tmp_path / "one"), output_arrays(tmp_path / "one" / "eval")) == before


def test_array_tasks_and_merge_write_both_outputs(tmp_path, demo_tokenizer_dir):
    data = write_files(tmp_path / "data", list(range(40)))
    for index in (0, 1):
        result = pack(data, tmp_path / "out", demo_tokenizer_dir, eval_records=3, num_tasks=2, task_index=index)
        assert result.dataset is None and result.eval.dataset is None
    assert not (tmp_path / "out" / "eval" / DATASET_JSON).exists()
    merge(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "eval" / DATASET_JSON).read_text())["stats"]["conversations_read"] == 3
    assert questions(tmp_path / "out" / "eval", demo_tokenizer_dir) == smallest_keys(3)


def test_the_loader_and_export_read_the_eval_output(tmp_path, demo_tokenizer_dir):
    pytest.importorskip("torch")
    from packsft.export import export_output
    from packsft.loader import PackedDataset

    data = write_files(tmp_path / "data", list(range(40)))
    pack(data, tmp_path / "out", demo_tokenizer_dir, eval_records=4)
    dataset = PackedDataset(tmp_path / "out" / "eval")
    assert len(dataset) == json.loads((tmp_path / "out" / "eval" / DATASET_JSON).read_text())["rows"] > 0
    export_output(tmp_path / "out" / "eval", tmp_path / "exported", "hf")
    assert (tmp_path / "exported" / "export.json").exists()


def test_the_cli_packs_the_split_and_says_where_records_went(tmp_path, demo_tokenizer_dir):
    data = write_files(tmp_path / "data", list(range(40)))
    result = cli_pack(data, tmp_path / "out", demo_tokenizer_dir, "--eval-records", "5")
    assert result.exit_code == 0, result.output
    from packsft.stats import format_summary

    train = json.loads((tmp_path / "out" / DATASET_JSON).read_text())
    evaluation = json.loads((tmp_path / "out" / "eval" / DATASET_JSON).read_text())
    assert "  held out for eval (5 records, by content): 5 records, packed in eval/" in format_summary(train)
    assert "  eval split (5 records, by content): 5 records here, 35 left to training" in format_summary(evaluation)


@pytest.mark.parametrize(("flags", "message"), [
    (["--eval-records", "2", "--eval-fraction", "0.1"],
     "Error: eval_fraction and eval_records choose the held-out split two ways; pass one of them"),
    (["--eval-fraction", "1.5"], "Error: eval_fraction must be a number between 0 and 1 (e.g. 0.01), got 1.5"),
])
def test_bad_split_flags_are_one_line_errors(tmp_path, demo_tokenizer_dir, flags, message):
    data = write_files(tmp_path / "data", list(range(40)))
    assert error_line(cli_pack(data, tmp_path / "out", demo_tokenizer_dir, *flags)) == message
    assert not (tmp_path / "out").exists()


def test_keys_thresholds_and_sides():
    assert records_threshold(iter([5, 1, 9, 3]), 2) == 4 and records_threshold(iter([5]), 2) == KEY_SPACE
    assert fraction_threshold(0.5) == KEY_SPACE // 2
    assert record_key({"b": 1, "a": [1, "é"]}) == record_key({"a": [1, "é"], "b": 1})  # canonical: key order
    train, held = RecordSplit(record_key(RECORDS[0]) + 1, "train"), RecordSplit(record_key(RECORDS[0]) + 1, "eval")
    assert [train.keeps(RECORDS[0]), held.keeps(RECORDS[0])] == [False, True]
    assert (train.elsewhere, held.elsewhere) == (1, 0)
