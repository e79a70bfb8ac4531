"""SLURM arrays split the units among their tasks only when asked (--num-tasks from-env)."""

from __future__ import annotations

import json

import pytest

from packsft.errors import ConfigError
from packsft.run.slurm import resolve_tasks
from tests.helpers import GOOD, write_conversations
from tests.helpers import cli_run as run


def test_shards_come_from_flags_or_from_env_only_when_asked(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    assert resolve_tasks(None, None) == (1, 0)  # inside an array, but sharding was not asked for
    assert resolve_tasks("3", 1) == (3, 1)
    assert resolve_tasks("from-env", None) == (4, 2)
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")  # --array=1-4
    assert resolve_tasks("from-env", None) == (4, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")  # --array=1,7: not consecutive
    with pytest.raises(ConfigError, match="array task 7 is not one of 4 consecutive tasks"):
        resolve_tasks("from-env", None)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(ConfigError, match="not inside a SLURM array task"):
        resolve_tasks("from-env", None)
    with pytest.raises(ConfigError, match="expected a count of 1 or more, or from-env"):
        resolve_tasks("two", None)


def test_pack_inside_an_array_packs_everything_and_says_how_to_shard(tmp_path, demo_tokenizer_dir, monkeypatch):
    data = tmp_path / "data"
    for name in "abc":
        write_conversations(data / f"{name}.parquet", GOOD[:3])
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    result = run("pack", str(data), str(tmp_path / "out"), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "32")
    assert result.exit_code == 0, result.output
    assert ("packsft: SLURM array task 1 of 3: packing every unit of the input (to split the units among the "
            "array's tasks instead, pass --num-tasks from-env)") in result.output
    assert len(json.loads((tmp_path / "out" / "dataset.json").read_text())["shards"]) == 3
    shard = run("pack", str(data), str(tmp_path / "task"), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "32",
                "-q", "--num-tasks", "from-env")
    assert shard.exit_code == 0 and not (tmp_path / "task" / "dataset.json").exists()
    assert sorted(p.name for p in (tmp_path / "task" / "shards").iterdir()) == ["00001"]
