"""`--group-files`: consecutive small input files pack together, up to a unit, and fill rows as one file does.

Data: the demo conversations cut into 24 small files (parquet and JSON Lines, 5 records each), packed with
the demo tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from packsft import PackConfig
from packsft.cli import main
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.errors import OutputError
from packsft.run import run_pack
from packsft.run.plan import Unit, group_small_files, plan_units
from tests.helpers import assert_output_verifies

FILES, ROWS_PER_FILE = 24, 5


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> Path:
    table = pq.read_table(next(Path(DEMO_DATA).glob("*.parquet")), columns=["messages"])
    folder = tmp_path_factory.mktemp("small")
    for index in range(FILES):
        part = table.slice(index * ROWS_PER_FILE, ROWS_PER_FILE)
        if index % 3 == 2:  # every third file is JSON Lines: grouping mixes formats
            lines = [json.dumps(record) for record in part.to_pylist()]
            (folder / f"part-{index:02d}.jsonl").write_text("\n".join(lines) + "\n")
        else:
            pq.write_table(part, folder / f"part-{index:02d}.parquet")
    return folder


@pytest.fixture(scope="module")
def config(demo_tokenizer_dir) -> PackConfig:
    return PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256)


def _unit(index: int, name: str, size: int, first_row: int = 0) -> Unit:
    return Unit(index=index, path=Path(name), name=name, bytes=size, file_bytes=size, first_row=first_row)


def test_group_small_files_packs_consecutive_small_files_up_to_a_unit():
    units = [_unit(0, "a", 40), _unit(1, "b", 50), _unit(2, "c", 30),  # a+b fit 100; c starts the next
             _unit(3, "big", 250), _unit(4, "big", 250, first_row=9),  # a file cut in two is never grouped
             _unit(5, "d", 60), _unit(6, "e", 40)]
    grouped = group_small_files(units, unit_bytes=100)
    assert [[part.name for part in unit.parts] for unit in grouped] == [["a", "b"], ["c"], ["big"], ["big"], ["d", "e"]]
    assert [unit.index for unit in grouped] == [0, 1, 2, 3, 4]
    assert [unit.bytes for unit in grouped] == [90, 30, 250, 250, 100]
    assert grouped[0].label == "a (+1 file)" and grouped[1].label == "c"
    assert Unit.from_dict(grouped[0].to_dict()) == grouped[0]
    assert "more" not in grouped[1].to_dict()  # plans without groups are written as before


@pytest.mark.slow
def test_grouped_files_fill_rows_and_verify_deep(tmp_path, small_files, config):
    alone = run_pack(small_files, tmp_path / "alone", config, quiet=True, workers=1)
    grouped_config = PackConfig(**{**config.to_dict(), "group_files": True})
    together = run_pack(small_files, tmp_path / "together", grouped_config, quiet=True, workers=1)
    assert alone.dataset is not None and together.dataset is not None
    assert len(plan_units(small_files, grouped_config)) == 1 < len(plan_units(small_files, config)) == FILES
    a, t = alone.dataset["stats"], together.dataset["stats"]
    assert t["conversations_packed"] == a["conversations_packed"] and t["trained_retention"] == 1.0
    assert t["chunks"] < a["chunks"] and t["fill"] > a["fill"]
    inputs = together.dataset["shards"][0]["inputs"]
    assert [record["path"] for record in inputs] == sorted(p.name for p in small_files.iterdir())
    assert all(record["rows"] == ROWS_PER_FILE for record in inputs)
    assert_output_verifies(tmp_path / "together", deep=True)
    # Two workers over units of about 40 KB: several groups, the same bytes as one process.
    small_units = run_pack(small_files, tmp_path / "two", grouped_config, quiet=True, workers=2, unit_bytes=40_000)
    one = run_pack(small_files, tmp_path / "one", grouped_config, quiet=True, workers=1, unit_bytes=40_000)
    assert 1 < small_units.packed == one.packed < FILES
    for shard in (tmp_path / "one" / "shards").iterdir():
        for name in ("tokens.npy", "loss_mask.npy", "segment_lengths.npy", "row_segments.npy"):
            assert (shard / name).read_bytes() == (tmp_path / "two" / "shards" / shard.name / name).read_bytes()


@pytest.mark.slow
def test_a_rerun_resumes_and_refuses_another_grouping(tmp_path, small_files, config):
    grouped_config = PackConfig(**{**config.to_dict(), "group_files": True})
    out = tmp_path / "out"
    run_pack(small_files, out, grouped_config, quiet=True, workers=1)
    assert run_pack(small_files, out, grouped_config, quiet=True, workers=1).packed == 0
    with pytest.raises(OutputError, match=r"made differently \(group_files True -> False\)"):
        run_pack(small_files, out, config, quiet=True, workers=1)


@pytest.mark.slow
def test_cli_suggests_group_files_for_many_small_files(tmp_path, small_files, demo_tokenizer_dir):
    args = ["pack", str(small_files), str(tmp_path / "out"), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "256"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    hint = (f"packsft: {FILES} input files are each under 1/4 of a unit (--unit-mib) and pack alone, each with its "
            "own mostly empty last row; --group-files packs them together")
    assert hint in result.output
    grouped = CliRunner().invoke(main, [*args[:2], str(tmp_path / "grouped"), *args[3:], "--group-files"])
    assert grouped.exit_code == 0 and hint not in grouped.output
    assert json.loads((tmp_path / "grouped" / "dataset.json").read_text())["config"]["group_files"] is True
