"""Scale-out: the plan, workers, array tasks + merge, resume after SIGKILL/SIGTERM, status.

Every way of running a plan must write the same bytes as one uninterrupted `--workers 1` run.
Data: the demo conversations cut into small parquet files (several row groups each, one with a bad
record), packed with the demo tokenizer and a tiny unit size so files split into row-group ranges.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packsft import PackConfig, PackedOutput, verify_output
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.errors import IncompleteOutputError, OutputError, PackInterrupted
from packsft.run import merge, run_pack, status
from packsft.run.outdir import PLAN_JSON, read_plan
from packsft.run.plan import assign_units, plan_units, split_row_groups
from packsft.write.layout import DATASET_JSON

UNIT_BYTES = 4_000  # cuts the 20-row test files into a few row-group ranges
FILES, ROWS_PER_FILE, ROW_GROUP = 6, 20, 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    table = pq.read_table(next(Path(DEMO_DATA).glob("*.parquet")), columns=["messages", "source"])
    folder = tmp_path_factory.mktemp("data")
    for index in range(FILES):
        part = table.slice(index * ROWS_PER_FILE, ROWS_PER_FILE)
        if index == 2:  # row 12 of part-2 (third row group) is bad: its rejects row must say 12
            messages = part.column("messages").to_pylist()
            messages[12] = []
            part = part.set_column(0, "messages", pa.array(messages, part.schema.field("messages").type))
        pq.write_table(part, folder / f"part-{index}.parquet", row_group_size=ROW_GROUP)
    return folder


@pytest.fixture(scope="module")
def config(demo_tokenizer_dir) -> PackConfig:
    return PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256, strategy="bestfit")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, config) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    result = run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    assert result.packed == len(plan_units(data_dir, unit_bytes=UNIT_BYTES)) and result.dataset is not None
    return out


def assert_same_output(out: Path, reference: Path) -> None:
    """dataset.json, rejects.jsonl and every shard file are byte-identical."""
    assert json.loads((out / "dataset.json").read_text()) == json.loads((reference / "dataset.json").read_text())
    assert (out / "rejects.jsonl").read_bytes() == (reference / "rejects.jsonl").read_bytes()
    files = sorted(p.relative_to(reference) for p in (reference / "shards").rglob("*.npy"))
    assert files == sorted(p.relative_to(out) for p in (out / "shards").rglob("*.npy"))
    for name in files:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not list((out / "shards").glob(".*"))  # no temporary or failure leftovers


def listed(units: list[int]) -> str:
    """How messages name units: the first ten, then a count."""
    return ", ".join(f"{i:05d}" for i in units[:10]) + (f" and {len(units) - 10} more" if len(units) > 10 else "")


def test_split_row_groups_balances_bytes_and_keeps_every_group():
    assert split_row_groups([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]
    assert split_row_groups([30, 5, 5, 5, 5], 2) == [(0, 1), (1, 5)]
    assert split_row_groups([1, 1, 1], 5) == [(0, 1), (1, 2), (2, 3)]
    assert split_row_groups([1, 1, 100], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_row_groups([7], 1) == [(0, 1)]
    assert split_row_groups([1000, 1000, 209], 2) == [(0, 1), (1, 3)]  # nearest, not first past, the middle


def test_plan_cuts_files_into_row_group_ranges(data_dir):
    units = plan_units(data_dir, unit_bytes=UNIT_BYTES)
    assert [u.index for u in units] == list(range(len(units)))
    assert len(units) > FILES
    for name in sorted({u.name for u in units}):
        mine = [u for u in units if u.name == name]
        assert [u.row_groups[0] for u in mine] == [0] + [u.row_groups[1] for u in mine[:-1]]
        assert mine[-1].row_groups[1] == ROWS_PER_FILE // ROW_GROUP
        assert [u.first_row for u in mine] == [ROW_GROUP * u.row_groups[0] for u in mine]
        assert sum(u.rows for u in mine) == ROWS_PER_FILE
    # One unit per file when the unit size is large; the plan never depends on anything else.
    assert [(u.name, u.row_groups) for u in plan_units(data_dir)] == [(f"part-{i}.parquet", (0, 4)) for i in range(FILES)]


def test_assign_units_gives_every_unit_to_exactly_one_task(data_dir):
    units = plan_units(data_dir, unit_bytes=UNIT_BYTES)
    tasks = assign_units(units, 3)
    assert sorted(i for task in tasks for i in task) == list(range(len(units)))
    loads = [sum(units[i].bytes for i in task) for task in tasks]
    assert max(loads) - min(loads) <= max(u.bytes for u in units)


def test_rejects_keep_the_row_number_of_the_file(reference):
    rejects = [json.loads(line) for line in (reference / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["row"], r["reason"]) for r in rejects] == [("part-2.parquet", 12, "empty message list")]
    per_shard = [p for p in (reference / "shards").glob("*/rejects.jsonl") if p.read_text()]
    assert len(per_shard) == 1


def test_two_workers_write_the_same_bytes(tmp_path, data_dir, config, reference):
    result = run_pack(data_dir, tmp_path / "out", config, quiet=True, unit_bytes=UNIT_BYTES, workers=2)
    assert result.dataset is not None
    assert_same_output(tmp_path / "out", reference)


def test_three_tasks_then_merge_write_the_same_bytes(tmp_path, data_dir, config, reference):
    out = tmp_path / "out"
    for index in range(3):
        result = run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES, num_tasks=3, task_index=index)
        assert result.dataset is None and not (out / "dataset.json").exists()
    assert result.missing == 0
    merge(out)
    assert_same_output(out, reference)


def test_merge_refuses_missing_units_naming_them_and_the_command(tmp_path, data_dir, config):
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES, num_tasks=3, task_index=0)
    units = plan_units(data_dir, unit_bytes=UNIT_BYTES)
    missing = sorted(set(range(len(units))) - set(assign_units(units, 3)[0]))
    with pytest.raises(IncompleteOutputError) as error:
        merge(out)
    assert str(error.value) == (
        f"{out}: {len(missing)} of {len(units)} units are not complete (units {listed(missing)}); pack them with: "
        f"packsft pack {data_dir} {out} --tokenizer {config.tokenizer} --seq-length 256 --unit-mib 0.0038147"
    )
    assert not (out / "dataset.json").exists()


def test_status_lists_done_missing_failed_and_the_command(tmp_path, data_dir, config):
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES, num_tasks=3, task_index=0)
    units = plan_units(data_dir, unit_bytes=UNIT_BYTES)
    done = assign_units(units, 3)[0]
    missing = sorted(set(range(len(units))) - set(done))
    (out / "shards" / f".failed-{missing[0]:05d}").write_text("error: disk full\n")
    (out / "shards" / f".tmp-{missing[1]:05d}-123").mkdir()
    report = status(out)
    assert (report.done, report.missing, report.running) == (done, missing, [missing[1]])
    assert report.format().splitlines() == [
        f"{out}: {len(done)} of {len(units)} units done, {len(missing)} missing (1 failed, 1 in progress or interrupted)",
        f"  failed {missing[0]:05d}: error: disk full",
        f"  missing: {listed(missing)}",
        "to pack only the missing units:",
        f"  packsft pack {data_dir} {out} --tokenizer {config.tokenizer} --seq-length 256 --unit-mib 0.0038147",
    ]
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)  # finishes the rest and merges
    assert status(out).format() == f"{out}: {len(units)} of {len(units)} units done, 0 missing (0 failed, 0 in progress or interrupted)\ncomplete: dataset.json written"


def test_a_rerun_with_other_settings_is_refused(tmp_path, data_dir, config):
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES, num_tasks=3, task_index=0)
    with pytest.raises(OutputError, match="made differently \\(seq_length 256 -> 128\\)"):
        run_pack(data_dir, out, PackConfig(**{**config.to_dict(), "seq_length": 128}), quiet=True, unit_bytes=UNIT_BYTES)


@pytest.mark.slow
def test_units_are_identified_by_content_a_change_redoes_only_the_units_that_read_it(tmp_path, data_dir, config,
                                                                                     reference):
    """Input identity is the bytes a unit reads, not the file's mtime: a copy without its mtimes resumes with nothing
    packed; one changed character (in one row of one row group) re-packs exactly the unit that reads it."""
    out = tmp_path / "out"
    first = run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    copy = tmp_path / "data"  # elsewhere, without the mtimes (as `cp` without -p, or a download, leaves them)
    copy.mkdir()
    for path in sorted(data_dir.glob("*.parquet")):
        (copy / path.name).write_bytes(path.read_bytes())
        os.utime(copy / path.name, ns=(0, 1_000_000_000))
    again = run_pack(copy, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    assert again.packed == 0 and again.skipped == first.packed
    table = pq.read_table(copy / "part-4.parquet")
    messages = table.column("messages").to_pylist()
    text = messages[-1][0]["content"]
    messages[-1][0]["content"] = ("X" if text[0] != "X" else "Y") + text[1:]  # the last row group's last row
    table = table.set_column(0, "messages", pa.array(messages, table.schema.field("messages").type))
    pq.write_table(table, copy / "part-4.parquet", row_group_size=ROW_GROUP)
    units = plan_units(copy, unit_bytes=UNIT_BYTES)
    changed = [u for u in units if u.name == "part-4.parquet" and u.row_groups[1] == table.num_rows // ROW_GROUP + (
        table.num_rows % ROW_GROUP > 0)]
    result = run_pack(copy, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    assert len(changed) == 1 and result.packed == 1 and result.skipped == len(units) - 1 and result.dataset


def test_sigterm_stops_cleanly_and_a_rerun_finishes(tmp_path, data_dir, config, reference, monkeypatch):
    import packsft.run.local

    write_unit = packsft.run.local.write_unit

    def write_then_terminate(*args, **kwargs):
        written = write_unit(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as if preempted right after the first unit
        return written

    out = tmp_path / "out"
    monkeypatch.setattr(packsft.run.local, "write_unit", write_then_terminate)
    with pytest.raises(PackInterrupted) as stop:
        run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    units = len(plan_units(data_dir, unit_bytes=UNIT_BYTES))
    assert str(stop.value).startswith(f"stopped by SIGTERM: 1 of {units} units are complete and kept. Rerun the same command to resume (packsft pack")
    monkeypatch.setattr(packsft.run.local, "write_unit", write_unit)
    assert run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES).skipped == 1
    assert_same_output(out, reference)


def _pack_in_child(data_dir: Path, out: Path, config: PackConfig) -> None:
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    os._exit(0)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_writes_the_same_bytes(tmp_path, data_dir, config, reference, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # forked children of a process that tokenized
    fork = multiprocessing.get_context("fork")
    # Timed warm, as the trials run: a first pack of a tokenizer may also fill the tokenizer cache (gigatoken's input,
    # the marker encoder); a timing run longer than the trials lands their kills after the end (5 of 12 in two CI
    # runs: once a cold timing run, once a warm one slowed by the machine), so the shortest of two warm runs counts.
    durations = []
    for timing in ("warm-up", "timing-1", "timing-2"):
        started = time.perf_counter()
        child = fork.Process(target=_pack_in_child, args=(data_dir, tmp_path / timing, config))
        child.start()
        child.join()
        durations.append(time.perf_counter() - started)
    duration = min(durations[1:])
    rng = random.Random(6)
    killed_before_the_end = 0
    for trial in range(12):
        out = tmp_path / f"trial-{trial}"
        child = fork.Process(target=_pack_in_child, args=(data_dir, out, config))
        child.start()
        time.sleep(rng.uniform(0, duration))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        killed_before_the_end += not (out / "dataset.json").exists()
        if rng.random() < 0.5:  # sometimes a second kill, during the resumed run
            child = fork.Process(target=_pack_in_child, args=(data_dir, out, config))
            child.start()
            time.sleep(rng.uniform(0, duration / 2))
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
        assert_same_output(out, reference)
    assert killed_before_the_end >= 6  # the kills landed mid-run, not after it


def test_cli_status_and_merge_on_a_partial_output(tmp_path, data_dir, config):
    from click.testing import CliRunner

    from packsft.cli import main

    out = tmp_path / "out"
    common = ["--tokenizer", config.tokenizer, "--seq-length", "256", "--unit-mib", "0.0038147", "-q"]
    runner = CliRunner()
    assert runner.invoke(main, ["pack", str(data_dir), str(out), *common, "--num-tasks", "2", "--task-index", "1"]).exit_code == 0
    merged = runner.invoke(main, ["merge", str(out)])
    assert merged.exit_code == 1 and "units are not complete" in merged.output
    report = runner.invoke(main, ["status", str(out)])
    assert report.exit_code == 0 and report.output.splitlines()[-2] == "to pack only the missing units:"
    assert runner.invoke(main, ["pack", str(data_dir), str(out), *common, "--workers", "2"]).exit_code == 0
    assert (out / "dataset.json").exists() and runner.invoke(main, ["merge", str(out)]).exit_code == 0


def test_the_same_data_and_tokenizer_through_other_paths_resume_every_unit(tmp_path, data_dir, config, monkeypatch):
    """Identity is content: a symlinked, relative spelling of the same data and tokenizer gives the same
    fingerprints, and a resume packs nothing."""
    out = tmp_path / "out"
    first = run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    fingerprints = read_plan(out).fingerprints
    (tmp_path / "data-link").symlink_to(data_dir)
    (tmp_path / "tok-link").symlink_to(Path(config.tokenizer))
    monkeypatch.chdir(tmp_path)
    again = run_pack("data-link", out, replace(config, tokenizer="tok-link"), quiet=True, unit_bytes=UNIT_BYTES)
    assert again.packed == 0 and again.skipped == first.packed
    assert read_plan(out).fingerprints == fingerprints


@pytest.mark.slow
def test_an_output_of_an_older_packsft_is_read_and_packed_again_saying_why(tmp_path, data_dir, config, capfd):
    """Outputs whose units were identified by paths and mtimes (before content identity) still verify and load; a
    rerun packs every unit again, under one line that says why, never some of each."""
    out = tmp_path / "out"
    first = run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    plan = json.loads((out / PLAN_JSON).read_text())
    del plan["identity_version"]
    for unit in plan["units"]:
        unit.pop("content")
        unit["fingerprint"] = "0" * 56 + unit["fingerprint"][:8]  # another identity, as an older packsft made
    (out / PLAN_JSON).write_text(json.dumps(plan))
    dataset = json.loads((out / DATASET_JSON).read_text())
    for shard, unit in zip(dataset["shards"], plan["units"]):
        shard["fingerprint"] = unit["fingerprint"]
        manifest_path = out / "shards" / shard["name"] / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["fingerprint"] = unit["fingerprint"]
        manifest_path.write_text(json.dumps(manifest))
    (out / DATASET_JSON).write_text(json.dumps(dataset))
    assert verify_output(out) == [] and len(PackedOutput(out)) == first.dataset["stats"]["chunks"]
    capfd.readouterr()
    again = run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    assert again.packed == first.packed and again.skipped == 0
    assert "was planned by an older packsft, which identified units by file paths and mtimes" in capfd.readouterr().err
    assert verify_output(out) == []
