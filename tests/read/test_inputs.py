"""Inputs: folders, globs, files and URLs, named from their common root; many small files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from packsft import PackConfig
from packsft.errors import InputError
from packsft.read.inputs import list_inputs
from packsft.run.pipeline import run_pack
from packsft.run.plan import plan_inputs
from packsft.verify.checks import check_output
from tests.helpers import GOOD, assert_output_verifies, conv, write_conversations
from tests.helpers import cli_pack as pack
from tests.helpers import cli_run as run
from tests.helpers import output_arrays as arrays


@pytest.fixture
def tree(tmp_path) -> Path:
    data = tmp_path / "data"
    write_conversations(data / "b" / "two.parquet", GOOD[3:6])
    write_conversations(data / "a.parquet", GOOD[:3])
    (data / "c").mkdir()
    (data / "c" / "three.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD[6:]))
    (data / "notes.txt").write_text("not an input")
    return data


def test_inputs_as_folder_glob_and_files_are_named_from_their_common_root(tree):
    assert list_inputs(tree).root == str(tree)
    names = ["a.parquet", "b/two.parquet", "c/three.jsonl"]
    assert [name for name, _ in list_inputs(tree).files] == names
    assert [name for name, _ in list_inputs(f"{tree}/**/*.parquet").files] == ["a.parquet", "b/two.parquet"]
    listing = list_inputs([str(tree / "c" / "three.jsonl"), str(tree / "b"), str(tree / "a.parquet")])
    assert listing.root == str(tree) and [name for name, _ in listing.files] == names
    assert [name for name, _ in list_inputs([str(tree / "b"), f"{tree}/b/*.parquet"]).files] == ["two.parquet"]


@pytest.mark.parametrize("spec, message", [
    ("{d}/*.csv", "{d}/*.csv: the pattern matches no *.parquet, *.jsonl[.gz] or *.json[.gz] files"),
    ("{d}/notes.txt", "{d}/notes.txt: not a *.parquet, *.jsonl[.gz] or *.json[.gz] file"),
    ("{d}/nope", "{d}/nope: no such file or folder. Pass the folder (or the files) that hold your records: *.parquet, *.jsonl[.gz] or *.json[.gz]"),
])
def test_inputs_that_yield_nothing_are_errors(tree, spec, message):
    with pytest.raises(InputError) as error:
        list_inputs(spec.format(d=tree))
    assert str(error.value) == message.format(d=tree)


def test_several_inputs_pack_like_one_folder_and_resume_and_verify_deep(tree, tmp_path, demo_tokenizer_dir):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert pack(tree, whole, demo_tokenizer_dir).exit_code == 0
    inputs = [f"{tree}/*.parquet", tree / "b", tree / "c" / "three.jsonl"]
    assert pack(inputs, parts, demo_tokenizer_dir).exit_code == 0
    assert arrays(parts) == arrays(whole)
    plan = json.loads((parts / "plan.json").read_text())
    assert plan["inputs"] == [str(i) for i in inputs] and plan["data_dir"] == str(tree)
    result = run("pack", *map(str, inputs), str(parts), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "32")
    assert "(0 units packed, 3 already done)" in result.output
    assert_output_verifies(parts, deep=True)


def test_remote_urls_are_read_through_fsspec(tree, tmp_path, demo_tokenizer_dir):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in (tree / "b" / "two.parquet", tree / "c" / "three.jsonl"):
        memory.pipe(f"/silent-bucket/data/{path.parent.name}/{path.name}", path.read_bytes())
    local = tmp_path / "local"
    (local / "b").mkdir(parents=True)
    (local / "c").mkdir()
    for path in (tree / "b" / "two.parquet", tree / "c" / "three.jsonl"):
        (local / path.parent.name / path.name).write_bytes(path.read_bytes())
    try:
        config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=32)
        result = run_pack("memory://silent-bucket/data", tmp_path / "remote-out", config, quiet=True, workers=1)
        run_pack(local, tmp_path / "local-out", config, quiet=True, workers=1)
    finally:
        memory.rm("/silent-bucket", recursive=True)
    assert [s["inputs"][0]["path"] for s in result.dataset["shards"]] == ["b/two.parquet", "c/three.jsonl"]
    assert result.dataset["data_dir"] == "memory:///silent-bucket/data"  # fsspec writes the memory root so
    assert arrays(tmp_path / "remote-out") == arrays(tmp_path / "local-out")
    report = check_output(tmp_path / "remote-out", deep=True, allow_skip=True)  # without it, the skip fails verify
    assert report.ok and report.notes == [
        "deep check skipped: the inputs are remote (memory:///silent-bucket/data); --deep re-packs local inputs only"]


def test_a_remote_scheme_without_its_filesystem_library_says_what_to_install(monkeypatch):
    pytest.importorskip("fsspec")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    with pytest.raises(InputError) as error:
        list_inputs("s3://bucket/data")
    assert str(error.value) == ("s3://bucket/data: reading s3:// URLs needs s3fs, which is not installed (Install "
                                "s3fs to access S3). pip install s3fs (or copy the files to a local folder)")
    with pytest.raises(InputError, match="mixes local paths and URLs"):
        list_inputs(["s3://bucket/data", "data/"])


MANY_FILES = 10_000


def _small_files(folder: Path, count: int) -> None:
    for index in range(count):
        path = folder / f"part-{index % 100:02d}" / f"f{index:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(conv(("user", f"Q{index}?"), ("assistant", f"A{index}."))) + "\n")


@pytest.mark.slow
def test_ten_thousand_small_files_plan_one_unit_each_in_name_order(tmp_path):
    _small_files(tmp_path / "data", MANY_FILES)
    units, skipped = plan_inputs(tmp_path / "data")
    assert len(units) == MANY_FILES and skipped == []
    names = [unit.name for unit in units]
    assert names == sorted(names) and names[:2] == ["part-00/f00000.jsonl", "part-00/f00100.jsonl"]
    assert [unit.index for unit in units] == list(range(MANY_FILES))


def test_packing_many_files_does_constant_work_per_file(tmp_path, demo_tokenizer_dir, monkeypatch):
    """No step rescans the output or re-opens inputs per unit: every count is linear in the files."""
    files = 200
    _small_files(tmp_path / "data", files)
    calls = {"open_input": 0, "read_manifest": 0, "listdir": 0}

    def counted(module: str, name: str, key: str) -> None:
        original = getattr(sys.modules[module], name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(f"{module}.{name}", wrapper)

    counted("packsft.run.plan", "open_input", "open_input")
    counted("packsft.stages", "open_input", "open_input")
    counted("packsft.run.outdir", "read_manifest", "read_manifest")
    original_iterdir = Path.iterdir

    def iterdir(self):
        calls["listdir"] += self.name == "shards"
        return original_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this test measures
    result = run_pack(tmp_path / "data", tmp_path / "out", PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=16),
                      quiet=True, workers=1)
    assert len(result.dataset["shards"]) == files
    # Each file is opened to plan and to pack it; each manifest is read to skip done units, to check
    # the run completed them, at merge to check again and to sum them. shards/ is listed a fixed number of times.
    assert calls == {"open_input": 2 * files, "read_manifest": 4 * files, "listdir": 2}
