"""Issue 27 item 4: `verify --deep` re-packs from where the pack ran, and a unit it cannot re-pack fails the
check unless `--allow-skip` accepts it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from packsft import PackConfig
from packsft.cli import main
from packsft.run import run_pack
from packsft.verify import check_output
from tests.helpers import GOOD, write_conversations

HINT = "Run verify where the inputs and tokenizer are, or pass --allow-skip to accept units --deep cannot re-pack"


def pack_relative(project: Path, out: str, tokenizer: Path, monkeypatch) -> Path:
    """Pack data/ (two files) from the working directory `project`, every path given relative to it, and store
    them as given (as packsft wrote them before it recorded absolute paths)."""
    for i in (0, 1):
        write_conversations(project / "data" / f"part-{i}.parquet", GOOD[i::2])
    monkeypatch.chdir(project)
    relative = os.path.relpath(tokenizer, project)
    run_pack("data", out, PackConfig(tokenizer=relative, seq_length=32), quiet=True)
    path = project / out / "dataset.json"
    dataset = json.loads(path.read_text())
    dataset["data_dir"], dataset["config"]["tokenizer"], dataset["tokenizer"]["name"] = "data", relative, relative
    path.write_text(json.dumps(dataset, indent=2))
    return project / out


@pytest.mark.parametrize("out", ["out", "../outputs/out"], ids=["inside", "beside"])
def test_deep_repacks_from_another_working_directory(tmp_path, demo_tokenizer_dir, monkeypatch, out):
    """OUT_DIR inside the pack's working directory: data/ is found from OUT_DIR's parent. Beside it: from the
    working directory plan.json's absolute input names."""
    out_dir = pack_relative(tmp_path / "project", out, demo_tokenizer_dir, monkeypatch)
    tokenizer = json.loads((out_dir / "dataset.json").read_text())["config"]["tokenizer"]
    (tmp_path / "deeper" / "elsewhere").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deeper" / "elsewhere")
    assert not Path("data").exists() and not Path(tokenizer).exists()
    result = CliRunner().invoke(main, ["verify", os.path.relpath(out_dir), "--deep"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout.rstrip().endswith("; 2 unit(s) re-packed and identical")


@pytest.fixture
def inputs_gone(tmp_path, demo_tokenizer_dir, monkeypatch) -> Path:
    """An output whose inputs were deleted after packing."""
    out = pack_relative(tmp_path / "project", "out", demo_tokenizer_dir, monkeypatch)
    shutil.rmtree(tmp_path / "project" / "data")
    return out


def test_a_unit_deep_cannot_repack_fails_the_check(inputs_gone):
    result = CliRunner().invoke(main, ["verify", str(inputs_gone), "--deep"])
    assert result.exit_code == 1
    assert result.stdout == "".join(
        f"shards/0000{i}: deep check skipped for shard 0000{i}: input data/part-{i}.parquet is gone. {HINT}\n"
        for i in (0, 1))
    assert result.stderr == f"2 problem(s) found in {inputs_gone}\n"


def test_allow_skip_accepts_it_and_says_so(inputs_gone):
    result = CliRunner().invoke(main, ["verify", str(inputs_gone), "--deep", "--allow-skip"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "".join(f"note: deep check skipped for shard 0000{i}: input data/part-{i}.parquet is gone\n"
                                    for i in (0, 1))
    assert result.stdout.startswith(f"ok: {inputs_gone}: 2 shard(s), ")
    assert result.stdout.endswith("segments consistent; 2 could not be re-packed (--allow-skip)\n")


def test_a_tokenizer_that_changed_is_a_skip_too(tmp_path, demo_tokenizer_dir, chatml_dir, monkeypatch):
    """Every reason --deep cannot re-pack is a problem the same way: here the tokenizer folder now holds another
    vocabulary (two tokens more)."""
    tokenizer = Path(shutil.copytree(demo_tokenizer_dir, tmp_path / "tok"))
    out = pack_relative(tmp_path / "project", "out", tokenizer, monkeypatch)
    shutil.rmtree(tokenizer)
    shutil.copytree(chatml_dir, tokenizer)
    report = check_output(out, deep=True)
    assert [str(p) for p in report.problems] == [
        f"dataset.json: deep check skipped: tokenizer '../tok' changed since packing (fingerprint differs). {HINT}"]
    assert check_output(out, deep=True, allow_skip=True).ok
