"""Paths that travel: a pack given relative paths names its inputs and tokenizer by absolute paths in plan.json and
dataset.json, so inspect, report and verify --deep work from any folder; identity stays content, so moved inputs and
tokenizer resume; where the tokenizer is gone, inspect and report say how to name it (--tokenizer PATH).

Data: the demo conversations in two parquet files, packed with the demo tokenizer (a copy under the test's folder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from packsft import PackConfig
from packsft.cli import main
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.run import run_pack
from packsft.run.outdir import PLAN_JSON, read_plan
from packsft.write.layout import DATASET_JSON
from tests.helpers import assert_output_verifies

SEQ = 256


@pytest.fixture()
def project(tmp_path, demo_tokenizer_dir, monkeypatch) -> Path:
    """tmp_path/work holding data/ and tok/, the working directory of the pack."""
    work = tmp_path / "work"
    table = pq.read_table(next(Path(DEMO_DATA).glob("*.parquet")), columns=["messages", "source"])
    (work / "data").mkdir(parents=True)
    pq.write_table(table.slice(0, 60), work / "data" / "a.parquet")
    pq.write_table(table.slice(60), work / "data" / "b.parquet")
    shutil.copytree(demo_tokenizer_dir, work / "tok")
    monkeypatch.chdir(work)
    return work


def pack_relative(data: str = "data", tokenizer: str = "tok", out: str = "out"):
    return run_pack(data, out, PackConfig(tokenizer=tokenizer, seq_length=SEQ), quiet=True)


def test_plan_and_dataset_name_inputs_and_tokenizer_by_absolute_paths(project):
    result = pack_relative()
    plan = json.loads((project / "out" / PLAN_JSON).read_text())
    dataset = json.loads((project / "out" / DATASET_JSON).read_text())
    data, tok = str(project / "data"), str(project / "tok")
    assert (plan["data_dir"], plan["inputs"], plan["config"]["tokenizer"], plan["tokenizer"]["name"]) == (
        data, [data], tok, tok)
    assert [unit["path"] for unit in plan["units"]] == [f"{data}/a.parquet", f"{data}/b.parquet"]
    assert [unit["name"] for unit in plan["units"]] == ["a.parquet", "b.parquet"]  # names stay relative
    assert (dataset["data_dir"], dataset["config"]["tokenizer"], dataset["tokenizer"]["name"]) == (data, tok, tok)
    manifest = json.loads((project / "out" / "shards" / "00000" / "manifest.json").read_text())
    assert manifest["config"]["tokenizer"] == tok
    assert result.dataset is not None


def test_inspect_report_and_verify_deep_work_from_another_folder(project, monkeypatch):
    pack_relative()
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    inspected = runner.invoke(main, ["inspect", str(project / "out"), "--no-color"])
    assert inspected.exit_code == 0, inspected.output
    assert "starts at BOS" in inspected.output
    reported = runner.invoke(main, ["report", str(project / "out"), "-o", "page.html"])
    assert reported.exit_code == 0, reported.output
    assert (elsewhere / "page.html").stat().st_size > 0
    assert_output_verifies(project / "out", deep=True)


def test_moved_inputs_and_tokenizer_resume_with_the_same_identity(project, monkeypatch):
    first = pack_relative()
    before = read_plan(project / "out")
    moved = project.parent / "moved"
    moved.mkdir()
    shutil.move(project / "data", moved / "chats")
    shutil.move(project / "tok", moved / "tokenizer")
    monkeypatch.chdir(moved)
    again = pack_relative("chats", "tokenizer", str(project / "out"))
    assert (again.packed, again.skipped) == (0, first.packed)
    after = read_plan(project / "out")
    assert after.fingerprints == before.fingerprints and after.identity() == before.identity()
    assert (after.data_dir, after.config["tokenizer"]) == (str(moved / "chats"), str(moved / "tokenizer"))
    assert again.dataset is not None and again.dataset["tokenizer"]["name"] == str(moved / "tokenizer")
    assert_output_verifies(project / "out", deep=True)


def test_a_tokenizer_that_moved_is_named_with_tokenizer_path(project):
    pack_relative()
    out, gone, moved = project / "out", project / "tok", project.parent / "tok-moved"
    shutil.move(gone, moved)
    runner = CliRunner()
    hint = (f"Error: tokenizer '{gone}': no such folder. Pass a folder holding tokenizer files (tokenizer.json, or "
            f"vocab.json + merges.txt) or a model-hub name. {out} was packed with tokenizer '{gone}': pass --tokenizer "
            "PATH to load it from where it is now (the same tokenizer files)\n")
    for command in (["inspect", str(out)], ["report", str(out), "-o", str(project / "page.html")]):
        refused = runner.invoke(main, command)
        assert (refused.exit_code, refused.output) == (1, hint)
        assert runner.invoke(main, [*command, "--tokenizer", str(moved)]).exit_code == 0
