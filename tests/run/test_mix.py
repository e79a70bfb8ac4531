"""Mixing by tokens (--mix): each source up- or down-sampled to its weight's share of the output's tokens (or by its
epochs), each record's copies chosen by its content; the same output for other file names, order, workers, array
tasks and reruns; per-source stats that add up; exact errors for bad specs.

Data: source `a` holds 30 JSON Lines conversations ("Question 0?" .. "Question 29?") in 3 files, source `b` 10
("Question 100?" ..) in one, packed with the demo tokenizer; which records an output holds is read back from its
decoded rows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from packsft import PackConfig
from packsft.read.mix import copies, mix_key
from packsft.run import merge, run_pack
from packsft.stats import format_summary
from packsft.verify import verify_output
from packsft.write.layout import PackedOutput
from tests.helpers import cli_pack, error_line, output_arrays

SEQ = 64


def record(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {i}?"},
                         {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 3)}]}


SOURCES = {"a": list(range(30)), "b": list(range(100, 110))}


def write_data(folder: Path, per_file: int = 10, reverse: bool = False) -> Path:
    for source, numbers in SOURCES.items():
        (folder / source).mkdir(parents=True)
        order = numbers[::-1] if reverse else numbers
        for start in range(0, len(order), per_file):
            lines = "".join(json.dumps(record(i)) + "\n" for i in order[start:start + per_file])
            (folder / source / f"{'z' if reverse else 'p'}{start // per_file}.jsonl").write_text(lines)
    return folder


def pack(data: Path, out: Path, tokenizer_dir: Path, mix, **options):
    return run_pack(data, out, PackConfig(tokenizer=str(tokenizer_dir), seq_length=SEQ, mix=mix), quiet=True,
                    **options)


def questions(out: Path, tokenizer_dir: Path) -> list[int]:
    """The numbers of the questions the output's rows hold, sorted (each as many times as it is there)."""
    from transformers import AutoTokenizer

    hf, output = AutoTokenizer.from_pretrained(tokenizer_dir), PackedOutput(out)
    text = "".join(hf.decode(output.array(shard, "tokens").reshape(-1).tolist()) for shard in range(len(output.shards)))
    return sorted(int(n) for n in re.findall(r"Question (\d+)\?", text))


def expected(rates: dict[str, float]) -> Counter:
    """Each question as many times as its record's copies at its source's rate."""
    return Counter({i: n for source, numbers in SOURCES.items() for i in numbers
                    if (n := copies(rates[source], mix_key(record(i))))})


def test_weights_set_each_source_s_share_of_the_tokens(tmp_path, demo_tokenizer_dir):
    data = write_data(tmp_path / "data")
    alone = {source: pack(data / source, tmp_path / f"alone-{source}", demo_tokenizer_dir, None)
             .dataset["stats"]["tokens_rendered"] for source in SOURCES}
    result = pack(data, tmp_path / "out", demo_tokenizer_dir, f"{data}/a=0.5,{data}/b=0.5")
    mix = result.dataset["config"]["mix"]
    total = alone["a"] + alone["b"]
    assert mix == [{"path": "a", "weight": 0.5, "tokens": alone["a"], "rate": 0.5 * total / alone["a"]},
                   {"path": "b", "weight": 0.5, "tokens": alone["b"], "rate": 0.5 * total / alone["b"]}]
    rates = {entry["path"]: entry["rate"] for entry in mix}
    assert rates["a"] < 1 < rates["b"] < 2  # a down-sampled, b repeated
    assert Counter(questions(result.out_dir, demo_tokenizer_dir)) == expected(rates)

    stats = result.dataset["stats"]
    per_source = stats["mix_sources"]
    wanted = expected(rates)
    for source, numbers in SOURCES.items():
        kept = [i for i in numbers if wanted[i]]
        row = per_source[source]
        assert (row["records_read"], row["records_kept"], row["records_left_out"]) == \
            (len(numbers), len(kept), len(numbers) - len(kept))
        assert row["repeats"] == sum(wanted[i] - 1 for i in kept)
    # The sources add up to the output: its tokens, and every record read (kept or left out).
    assert sum(row["tokens_kept"] for row in per_source.values()) == stats["tokens_rendered"]
    assert stats["conversations_read"] == sum(row["records_kept"] for row in per_source.values())
    assert stats["conversations_packed"] == sum(wanted.values())
    shares = [row["token_share"] for row in per_source.values()]
    assert all(abs(share - 0.5) < 0.1 for share in shares) and abs(sum(shares) - 1) < 1e-5
    assert verify_output(result.out_dir, deep=True, sample=4) == []  # re-packs every unit from its inputs


def test_epochs_repeat_and_sample_without_counting(tmp_path, demo_tokenizer_dir):
    data = write_data(tmp_path / "data")
    result = pack(data, tmp_path / "out", demo_tokenizer_dir, f"{data}/a=0.5x,{data}/b=2x")
    assert result.dataset["config"]["mix"] == [{"path": "a", "epochs": 0.5, "rate": 0.5},
                                               {"path": "b", "epochs": 2, "rate": 2.0}]
    assert "mix_tokens" not in json.loads((result.out_dir / "plan.json").read_text())  # no counting pass
    held = Counter(questions(result.out_dir, demo_tokenizer_dir))
    assert held == expected({"a": 0.5, "b": 2.0})
    assert all(held[i] == 2 for i in SOURCES["b"]) and 0 < sum(held[i] for i in SOURCES["a"]) < 30
    summary = format_summary(result.dataset)
    assert "    b          2 epochs   2.000        10        10        10               n/a" in summary


def test_the_mix_is_the_same_for_other_files_order_workers_tasks_and_reruns(tmp_path, demo_tokenizer_dir):
    data = write_data(tmp_path / "a")
    first = pack(data, tmp_path / "one", demo_tokenizer_dir, f"{data}/a=0.7,{data}/b=0.3")
    other = write_data(tmp_path / "b", per_file=7, reverse=True)
    second = pack(other, tmp_path / "two", demo_tokenizer_dir, f"{other}/b=0.3,{other}/a=0.7", workers=2)
    assert first.dataset["config"]["mix"][0]["rate"] == second.dataset["config"]["mix"][1]["rate"]
    assert questions(first.out_dir, demo_tokenizer_dir) == questions(second.out_dir, demo_tokenizer_dir)

    before = output_arrays(first.out_dir)
    again = pack(data, first.out_dir, demo_tokenizer_dir, f"{data}/a=0.7,{data}/b=0.3", workers=2)
    assert (again.packed, again.skipped) == (0, 4)  # resumed: the same resolved config and fingerprints
    overwritten = pack(data, first.out_dir, demo_tokenizer_dir, f"{data}/a=0.7,{data}/b=0.3", overwrite=True)
    assert overwritten.packed == 4 and output_arrays(first.out_dir) == before

    for index in (0, 1):
        task = pack(data, tmp_path / "tasks", demo_tokenizer_dir, f"{data}/a=0.7,{data}/b=0.3", num_tasks=2,
                    task_index=index)
        assert task.dataset is None
    merged = merge(tmp_path / "tasks")
    assert output_arrays(tmp_path / "tasks") == before
    assert merged["stats"]["mix_sources"] == first.dataset["stats"]["mix_sources"]


def test_a_toml_list_names_sources_from_its_folder(tmp_path, demo_tokenizer_dir):
    data = write_data(tmp_path / "data")
    config = tmp_path / "mix.toml"
    config.write_text('mix = [{path = "data/a", weight = 1}, {path = "data/b/p0.jsonl", epochs = 1}]\n')
    result = cli_pack(data, tmp_path / "out", demo_tokenizer_dir, "--config", str(config))
    assert result.exit_code == 0, result.output
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    mix = dataset["config"]["mix"]
    # The weighted sources keep as many tokens as they hold: a alone is weighted, so its rate is 1.
    assert [(entry["path"], entry["rate"]) for entry in mix] == [("a", 1.0), ("b/p0.jsonl", 1.0)]
    assert "  mixed by tokens (--mix): 0 records left out, 0 repeats added" in format_summary(dataset)


def test_the_eval_side_of_a_held_out_split_is_not_mixed(tmp_path, demo_tokenizer_dir):
    data = write_data(tmp_path / "data")
    result = run_pack(data, tmp_path / "out", PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=SEQ,
                                                          mix=f"{data}/a=1x,{data}/b=3x", eval_records=4), quiet=True)
    train, held = Counter(questions(result.out_dir, demo_tokenizer_dir)), questions(result.eval.out_dir,
                                                                                     demo_tokenizer_dir)
    assert len(held) == len(set(held)) == 4 and not set(held) & set(train)
    assert all(train[i] == 3 for i in SOURCES["b"] if i not in held)
    assert result.eval.dataset["config"]["mix"] is None


@pytest.mark.parametrize(("mix", "message"), [
    ("{data}/a=0.6,{data}/b=0.3", "Error: mix weights must sum to 1, got 0.9 ({data}/a=0.6, {data}/b=0.3)"),
    ("{data}/a=-0.5,{data}/b=1.5", "Error: mix weight of {data}/a must be a number >= 0, got -0.5"),
    ("{data}/a=0.5,{data}/c=0.5", "Error: mix source {data}/c: {data}/c: no such file or folder. Pass the folder "
                                  "(or the files) that hold your records: *.parquet, *.jsonl[.gz] or *.json[.gz]"),
    ("{data}/a=1", "Error: 1 input file of DATA is in no mix source: b/p0.jsonl; add a source for them to --mix or "
                   "leave them out of DATA"),
    ("{data}/a=0.5,{data}/a/p0.jsonl=0.2,{data}/b=0.3",
     "Error: input file a/p0.jsonl is in two mix sources (a and a/p0.jsonl); give each file one source"),
    ("{data}/a", "Error: --mix '{data}/a': each source is PATH=WEIGHT (a share of the tokens, e.g. data/a=0.7) or "
                 "PATH=Nx (epochs, e.g. data/a=2x)"),
    ("{data}/a=lots", "Error: --mix '{data}/a=lots': 'lots' is not a number; each source is PATH=WEIGHT (a share of "
                      "the tokens, e.g. data/a=0.7) or PATH=Nx (epochs, e.g. data/a=2x)"),
    ("{data}/a=0x,{data}/b=1x", "Error: mix epochs of {data}/a must be a number > 0, got 0.0"),
])
def test_bad_mixes_are_one_line_errors(tmp_path, demo_tokenizer_dir, mix, message):
    data = write_data(tmp_path / "data")
    result = cli_pack(data, tmp_path / "out", demo_tokenizer_dir, "--mix", mix.format(data=data))
    assert error_line(result) == message.format(data=data)
    assert not (tmp_path / "out" / "plan.json").exists()


@pytest.mark.parametrize(("toml", "message"), [
    ('mix = [{path = "data/a", weight = 0.5, epochs = 2}]', "mix source data/a has both a weight and epochs; give one "
                                                            "of them"),
    ('mix = [{path = "data/a"}]', "mix source data/a has neither a weight nor epochs; each source is PATH=WEIGHT "
                                  "(a share of the tokens, e.g. data/a=0.7) or PATH=Nx (epochs, e.g. data/a=2x)"),
    ('mix = [{path = "data/a", share = 1}]', "mix source data/a: unknown key(s) share; known keys: path, weight, "
                                             "epochs"),
])
def test_bad_toml_mixes_are_one_line_errors(tmp_path, demo_tokenizer_dir, toml, message):
    data = write_data(tmp_path / "data")
    (tmp_path / "mix.toml").write_text(toml + "\n")
    result = cli_pack(data, tmp_path / "out", demo_tokenizer_dir, "--config", str(tmp_path / "mix.toml"))
    assert error_line(result) == f"Error: {message}"  # the path as the file gives it


def test_a_source_outside_data_is_an_error(tmp_path, demo_tokenizer_dir):
    data = write_data(tmp_path / "data")
    result = cli_pack(data / "a", tmp_path / "out", demo_tokenizer_dir, "--mix", f"{data}/a=0.5,{data}/b=0.5")
    assert error_line(result) == (f"Error: mix source {data}/b is not inside DATA ({data}/a); a source is a file, "
                                  "folder or glob inside DATA")


def test_copies_follow_the_rate_and_the_key():
    assert [copies(2.0, key) for key in (0, 1 << 63)] == [2, 2]
    assert [copies(0.5, key) for key in (0, (1 << 63) - 1, 1 << 63)] == [1, 1, 0]
    assert [copies(1.25, key) for key in (0, 1 << 62, (1 << 64) - 1)] == [2, 1, 1]
    assert mix_key({"b": 1, "a": 2}) == mix_key({"a": 2, "b": 1})  # canonical JSON: key order
