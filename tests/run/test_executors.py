"""Each executor behind the one Executor interface: what it runs, what it records, how a rerun resumes.

Data: the demo conversations cut into 4 parquet files (one unit each), packed with the demo tokenizer.
SLURM's sbatch is replaced by a recorder (test_slurm runs a real array), Ray's cluster by an
executor that loses every unit (test_ray runs a real cluster).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from packsft.cli import main
from packsft.config import PackConfig
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.errors import ConfigError, IncompleteOutputError
from packsft.run import (
    LocalExecutor,
    RayExecutor,
    RayOptions,
    SlurmExecutor,
    SlurmOptions,
    merge,
    run_pack,
    status,
)
from packsft.run.outdir import EXECUTOR_JSON, PLAN_JSON, OutDir, read_plan
from packsft.run.plan import assign_units
from packsft.run.slurm import MERGE_SCRIPT, PACK_SCRIPT, SLURM_DIR

FILES, ROWS_PER_FILE = 4, 10


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    table = pq.read_table(next(Path(DEMO_DATA).glob("*.parquet")), columns=["messages"])
    folder = tmp_path_factory.mktemp("data")
    for index in range(FILES):
        pq.write_table(table.slice(index * ROWS_PER_FILE, ROWS_PER_FILE), folder / f"part-{index}.parquet")
    return folder


@pytest.fixture(scope="module")
def config(demo_tokenizer_dir) -> PackConfig:
    return PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256)


def flags(config: PackConfig) -> str:
    return f"--tokenizer {config.tokenizer} --seq-length 256"


@dataclass(frozen=True)
class RecordingLocal(LocalExecutor):
    """A LocalExecutor that notes the units it is given."""

    given: list[int] = field(default_factory=list)

    def run(self, plan, units, job, tokenizer, quiet) -> None:
        self.given.extend(unit.index for unit in units)
        super().run(plan, units, job, tokenizer, quiet)


class LostCluster(RayExecutor):
    """A RayExecutor whose cluster loses every unit (and which needs no Ray to be installed)."""

    def prepare(self, data, out_dir, config):
        return data, OutDir(Path(out_dir)), config

    def session(self):
        return contextlib.nullcontext()

    def run(self, plan, units, job, tokenizer, quiet) -> None:
        pass


@pytest.fixture
def sbatch(monkeypatch) -> list[tuple[str, ...]]:
    """The sbatch calls of SlurmExecutor, answered with job ids 100, 101, ..."""
    calls: list[tuple[str, ...]] = []

    def submit(*args: str) -> str:
        calls.append(args)
        return str(100 + len(calls) - 1)

    monkeypatch.setattr("packsft.run.slurm.sbatch", submit)
    return calls


def test_local_runs_only_the_missing_units(tmp_path, data_dir, config):
    out = tmp_path / "out"
    first = run_pack(data_dir, out, config, quiet=True, num_tasks=2, task_index=0)
    done = assign_units(read_plan(out).units, 2)[0]
    assert first.packed == len(done) and first.dataset is None
    executor = RecordingLocal(workers=1)
    result = run_pack(data_dir, out, config, quiet=True, executor=executor)
    assert executor.given == sorted(set(range(FILES)) - set(done))
    assert (result.packed, result.skipped, result.missing) == (FILES - len(done), len(done), 0)
    assert result.dataset is not None and not (out / EXECUTOR_JSON).exists()  # `packsft pack` records nothing

    again = RecordingLocal(workers=1)
    assert run_pack(data_dir, out, config, quiet=True, executor=again).packed == 0 and again.given == []


def test_workers_go_to_the_local_executor_not_beside_another(tmp_path, data_dir, config):
    with pytest.raises(ConfigError, match=r"pass LocalExecutor\(2\)"):
        run_pack(data_dir, tmp_path / "out", config, quiet=True, workers=2, executor=LocalExecutor(1))


def test_slurm_submits_the_tasks_of_the_missing_units_and_their_scripts_say_tasks(tmp_path, data_dir, config, sbatch):
    out = tmp_path / "out"
    executor = SlurmExecutor(SlurmOptions(array_size=2, throttle=1))
    result = run_pack(data_dir, out, config, quiet=True, executor=executor)
    pack_script, merge_script = (out / SLURM_DIR / name for name in (PACK_SCRIPT, MERGE_SCRIPT))
    assert result.missing == FILES and result.dataset is None  # queued, not packed yet
    assert sbatch == [(str(pack_script),), ("--dependency=afterok:100", "--kill-on-invalid-dep=yes", str(merge_script))]
    assert executor.submission is not None and (executor.submission.pack_job, executor.submission.merge_job) == ("100", "101")
    task_line = pack_script.read_text().splitlines()[-1]
    assert ' --num-tasks 2 --workers 1 --quiet --task-index "$SLURM_ARRAY_TASK_ID"' in task_line
    assert "shard" not in pack_script.read_text()
    assert json.loads((out / EXECUTOR_JSON).read_text()) == {
        "executor": "slurm", "array_size": 2, "pack_script": str(pack_script), "merge_script": str(merge_script)}

    # Task 1 runs (as the array would run it); a resubmission queues only task 0, throttled as asked.
    command = shlex.split(task_line.removeprefix("exec "))[1:-1]  # python -m packsft pack ... --task-index
    assert CliRunner().invoke(main, [*command[2:], "1"]).exit_code == 0
    assert status(out).command == (f"sbatch --array=0 {pack_script}, then once those tasks finish: "
                                   f"packsft merge {out}")
    sbatch.clear()
    run_pack(data_dir, out, config, quiet=True, executor=SlurmExecutor(SlurmOptions(array_size=2, throttle=1)))
    assert sbatch[0] == ("--array=0%1", str(pack_script))


def test_slurm_with_nothing_missing_submits_nothing_and_merges(tmp_path, data_dir, config, sbatch):
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True)
    executor = SlurmExecutor(SlurmOptions(array_size=2))
    result = run_pack(data_dir, out, config, quiet=True, executor=executor)
    assert sbatch == [] and executor.submission is None and result.dataset is not None


def test_old_task_flags_still_work_and_are_hidden(tmp_path, data_dir, config):
    common = ["--tokenizer", config.tokenizer, "--seq-length", "256", "-q"]
    runner = CliRunner()
    new = runner.invoke(main, ["pack", str(data_dir), str(tmp_path / "new"), *common, "--num-tasks", "2", "--task-index", "1"])
    old = runner.invoke(main, ["pack", str(data_dir), str(tmp_path / "old"), *common, "--num-shards", "2", "--shard-index", "1"])
    assert new.exit_code == 0 and old.exit_code == 0, old.output
    names = sorted(p.name for p in (tmp_path / "new" / "shards").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "old" / "shards").iterdir()) and len(names) == FILES // 2
    both = runner.invoke(main, ["pack", str(data_dir), str(tmp_path / "both"), *common, "--num-tasks", "2",
                                "--num-shards", "2"])
    assert both.exit_code == 2 and "pass --num-tasks or --num-shards (its old name), not both" in both.output
    text = runner.invoke(main, ["pack", "--help"]).output
    assert "--num-tasks" in text and "--task-index" in text
    assert "--num-shards" not in text and "--shard-index" not in text


@pytest.mark.parametrize("executor, settings, hint", [
    (LocalExecutor, {}, "packsft pack {data} {out} {flags}"),
    (RayExecutor, {"address": "10.0.0.1:6379"}, "packsft ray submit {data} {out} --address 10.0.0.1:6379 {flags}"),
    (RayExecutor, {"address": None}, "packsft ray submit {data} {out} {flags}"),
    (SlurmExecutor, {"array_size": 2, "pack_script": "/o/slurm/pack.sbatch", "merge_script": "/o/slurm/merge.sbatch"},
     "sbatch --array={tasks} /o/slurm/pack.sbatch, then once those tasks finish: packsft merge {out}"),
])
def test_each_executor_names_the_command_that_resumes_it(tmp_path, data_dir, config, executor, settings, hint):
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, num_tasks=2, task_index=0)
    plan = read_plan(out)
    missing = assign_units(plan.units, 2)[1]
    expected = hint.format(data=data_dir, out=out, flags=flags(config), tasks=1)
    assert executor.resume_hint(OutDir(out), plan, settings, missing) == expected


def test_a_lost_ray_run_is_resumed_by_ray_submit_even_after_a_local_run(tmp_path, data_dir, config):
    out = tmp_path / "out"
    result = run_pack(data_dir, out, config, quiet=True, executor=LostCluster(RayOptions(address="10.0.0.1:6379")))
    assert result.dataset is None and result.missing == FILES
    command = f"packsft ray submit {data_dir} {out} --address 10.0.0.1:6379 {flags(config)}"
    assert status(out).format().splitlines()[-1] == f"  {command}"
    with pytest.raises(IncompleteOutputError, match=f"pack them with: {command}$"):
        merge(out)
    run_pack(data_dir, out, config, quiet=True, num_tasks=2, task_index=0)  # a local run keeps the record
    assert status(out).command == command


@pytest.mark.parametrize("record, hint", [
    ({"slurm": {"array_size": 2, "pack_script": "/o/pack.sbatch", "merge_script": "/o/merge.sbatch"}, "ray": None},
     "sbatch --array=1 /o/pack.sbatch, then once those tasks finish: packsft merge {out}"),
    ({"slurm": None, "ray": {"address": "10.0.0.1:6379"}}, "packsft ray submit {data} {out} --address 10.0.0.1:6379 {flags}"),
    ({"slurm": None, "ray": None}, "packsft pack {data} {out} {flags}"),
])
def test_a_plan_of_an_older_packsft_with_its_executor_inside_resumes_with_the_right_hint(tmp_path, data_dir, config,
                                                                                          record, hint):
    """plan.json of a packsft before executor.json kept `slurm` and `ray` keys: its units are reused, and status names
    the same command before and after a local run rewrites plan.json (the record moves to executor.json)."""
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, num_tasks=2, task_index=0)
    plan = json.loads((out / PLAN_JSON).read_text())
    assert "slurm" not in plan and "ray" not in plan
    del plan["identity_version"]  # as written before it existed: the next run rewrites plan.json
    (out / PLAN_JSON).write_text(json.dumps({**plan, **record}))
    expected = hint.format(data=data_dir, out=out, flags=flags(config))
    assert status(out).command == expected

    again = run_pack(data_dir, out, config, quiet=True, num_tasks=4, task_index=0)
    assert again.packed == 0 and again.skipped == 1  # the identity did not change: units are reused
    rewritten = json.loads((out / PLAN_JSON).read_text())
    assert "slurm" not in rewritten and "identity_version" in rewritten
    assert status(out).command == expected
    assert (out / EXECUTOR_JSON).exists() == (expected.split()[:2] != ["packsft", "pack"])


def test_the_cli_submits_through_the_slurm_executor(tmp_path, data_dir, config, sbatch):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["slurm", "submit", str(data_dir), str(out), "--tokenizer", config.tokenizer,
                                       "--seq-length", "256", "--array-size", "8"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"submitted pack array 100 ({out.resolve() / SLURM_DIR / PACK_SCRIPT}) and merge job 101 (afterok)",
        f"watch: squeue -j 100,101   |   packsft status {out}",
    ]
    assert f"--num-tasks {FILES} " in (out / SLURM_DIR / PACK_SCRIPT).read_text()  # at most one task per unit
    assert sys.executable in (out / SLURM_DIR / PACK_SCRIPT).read_text()
