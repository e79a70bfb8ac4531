"""SlurmExecutor: the plan as a SLURM job array plus an `afterok` merge job; no coordinator of packsft's own.

    packsft slurm submit DATA OUT --array-size 4
      OUT/plan.json                      written here, before anything is queued
      OUT/slurm/pack.sbatch   --array=0-3 task i: packsft pack ... --num-tasks 4 --task-index i
      OUT/slurm/merge.sbatch  --dependency=afterok:<array job>: packsft merge OUT
      OUT/slurm/logs/                    one log per task
      OUT/executor.json                  the scripts and the array size, for `packsft status`

The array tasks share nothing but the output folder: each writes the shards of its units, and
`--requeue` is safe because a requeued task skips the units it already completed. Only the tasks that
have missing units are submitted. The scripts call the same Python that ran `submit`
(`sys.executable -m packsft`), with this packsft on PYTHONPATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packsft.errors import ConfigError, PacksftError
from packsft.read.inputs import is_url
from packsft.render.tokenizer import PackTokenizer
from packsft.run.executor import Executor, plan_flags
from packsft.run.outdir import OutDir
from packsft.run.plan import Plan, Unit, assign_units, data_specs
from packsft.run.unit import UnitJob

SLURM_DIR = "slurm"
PACK_SCRIPT = "pack.sbatch"
MERGE_SCRIPT = "merge.sbatch"


class SlurmError(PacksftError):
    """sbatch is missing or refused a job."""


@dataclass(frozen=True)
class SlurmOptions:
    array_size: int
    partition: str | None = None
    time: str | None = None
    cpus_per_task: int = 1
    throttle: int | None = None
    workers: int = 1


@dataclass(frozen=True)
class Submission:
    pack_job: str
    merge_job: str
    pack_script: Path
    merge_script: Path


# `--num-tasks from-env`: take the array task from SLURM's variables, only when asked to.
TASKS_FROM_ENV = "from-env"


def resolve_tasks(num_tasks: int | str | None, task_index: int | None) -> tuple[int, int]:
    """(num_tasks, task_index) from --num-tasks/--task-index; (1, 0) when neither is given.

    SLURM's array variables are read only for `--num-tasks from-env`: an array over several datasets
    (one per task) must not silently pack a share of each. The task's place is its id minus the
    array's first id, so `--array=1-4` and `--array=0-3` both count tasks 0..3.
    """
    if num_tasks != TASKS_FROM_ENV:
        count = str(num_tasks) if num_tasks is not None else "1"
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--num-tasks {num_tasks!r}: expected a count of 1 or more, or {TASKS_FROM_ENV}")
        return int(count), (task_index if task_index is not None else 0)
    env = os.environ
    count, task, first = (env.get(f"SLURM_ARRAY_TASK_{key}", "") for key in ("COUNT", "ID", "MIN"))
    if not (count.isdigit() and task.isdigit()):
        raise ConfigError("--num-tasks from-env: SLURM_ARRAY_TASK_COUNT/SLURM_ARRAY_TASK_ID are not set "
                          "(not inside a SLURM array task); pass --num-tasks N --task-index I")
    index = int(task) - (int(first) if first.isdigit() else 0)
    if task_index is not None and task_index != index:
        raise ConfigError(f"--task-index {task_index} disagrees with the array task ({index}); drop one of them")
    if not 0 <= index < int(count):
        raise ConfigError(f"--num-tasks from-env: array task {task} is not one of {count} consecutive tasks "
                          "(an array like --array=1,3); pass --num-tasks N --task-index I")
    return int(count), index


def array_note() -> str | None:
    """A note for a run inside a SLURM array that packs every unit because no split among tasks was asked for."""
    count, task = os.environ.get("SLURM_ARRAY_TASK_COUNT", ""), os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not count.isdigit() or int(count) < 2:
        return None
    return (f"packsft: SLURM array task {task} of {count}: packing every unit of the input (to split the "
            f"units among the array's tasks instead, pass --num-tasks {TASKS_FROM_ENV})")


def _header(job_name: str, options: SlurmOptions, log: Path, cpus: int) -> list[str]:
    lines = [f"#SBATCH --job-name={job_name}", f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --output={log}",
             "#SBATCH --open-mode=append", "#SBATCH --requeue"]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.time:
        lines.append(f"#SBATCH --time={options.time}")
    return lines


def write_scripts(data: str | Path | Sequence[str | Path], out_dir: Path, flags: list[str],
                  options: SlurmOptions) -> tuple[Path, Path]:
    """Write OUT/slurm/pack.sbatch (the array) and OUT/slurm/merge.sbatch; returns their paths.

    `data` is the pack's DATA argument(s); local ones are made absolute (tasks may start elsewhere).
    """
    folder = out_dir.resolve() / SLURM_DIR
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    package_parent = shlex.quote(str(Path(__file__).resolve().parents[2]))
    array = f"0-{options.array_size - 1}" + (f"%{options.throttle}" if options.throttle else "")
    out = shlex.quote(str(out_dir.resolve()))
    inputs = [spec if is_url(spec) else str(Path(spec).resolve()) for spec in data_specs(data)]
    pack_cmd = shlex.join(["-m", "packsft", "pack", *inputs, str(out_dir.resolve()), *flags,
                           "--num-tasks", str(options.array_size), "--workers", str(options.workers), "--quiet"])
    common = ["set -euo pipefail", f"export PYTHONPATH={package_parent}${{PYTHONPATH:+:$PYTHONPATH}}"]
    pack = [
        "#!/bin/bash",
        "# packsft: the units of the plan in OUT/plan.json (written by `packsft slurm submit`), split among array tasks.",
        f"# Rerun only some tasks with: sbatch --array=1,3 {folder / PACK_SCRIPT}",
        f"#SBATCH --array={array}",
        *_header("packsft-pack", options, folder / "logs" / "pack-%A_%a.log", options.cpus_per_task),
        "",
        *common,
        "# The tokenizer's threads stay inside this task's CPUs.",
        "export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        f'exec {python} {pack_cmd} --task-index "$SLURM_ARRAY_TASK_ID"',
        "",
    ]
    merge = [
        "#!/bin/bash",
        "# packsft: check every unit of the plan is complete and write dataset.json (metadata only).",
        *_header("packsft-merge", options, folder / "logs" / "merge-%j.log", 1),
        "",
        *common,
        f"exec {python} -m packsft merge {out}",
        "",
    ]
    paths = folder / PACK_SCRIPT, folder / MERGE_SCRIPT
    for path, lines in zip(paths, (pack, merge)):
        path.write_text("\n".join(lines))
        path.chmod(0o755)
    return paths


def sbatch(*args: str) -> str:
    """Submit with sbatch --parsable; returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found: run `packsft slurm submit` on a SLURM login node (or set PATH)")
    result = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()[-1]
        raise SlurmError(f"sbatch {' '.join(args)} failed: {reason}")
    return result.stdout.strip().split(";")[0]


@dataclass
class SlurmExecutor(Executor):
    """The missing units as the tasks of a SLURM array that hold them, and a merge job after them (afterok).

    `run` returns once both are queued; `submission` then names them (None when no unit was missing).
    """

    options: SlurmOptions
    submission: Submission | None = None
    name = "slurm"

    def array_size(self, plan: Plan) -> int:
        return max(1, min(self.options.array_size, len(plan.units)))  # at most one task per unit

    def settings(self, out: OutDir, plan: Plan) -> dict[str, Any]:
        folder = out.path.resolve() / SLURM_DIR
        return {"array_size": self.array_size(plan), "pack_script": str(folder / PACK_SCRIPT),
                "merge_script": str(folder / MERGE_SCRIPT)}

    def run(self, plan: Plan, units: list[Unit], job: UnitJob, tokenizer: PackTokenizer, quiet: bool) -> None:
        if not units:
            return
        options = replace(self.options, array_size=self.array_size(plan))
        pack_script, merge_script = write_scripts(plan.data_inputs, job.out.path, plan_flags(plan), options)
        tasks = _tasks_of(plan, [unit.index for unit in units], options.array_size)
        subset = [] if len(tasks) == options.array_size else [
            "--array=" + ",".join(map(str, tasks)) + (f"%{options.throttle}" if options.throttle else "")]
        pack_job = sbatch(*subset, str(pack_script))
        merge_job = sbatch(f"--dependency=afterok:{pack_job}", "--kill-on-invalid-dep=yes", str(merge_script))
        self.submission = Submission(pack_job, merge_job, pack_script, merge_script)

    @classmethod
    def resume_hint(cls, out: OutDir, plan: Plan, settings: dict[str, Any], missing: list[int]) -> str:
        tasks = ",".join(map(str, _tasks_of(plan, missing, settings["array_size"])))
        return (f"sbatch --array={tasks} {shlex.quote(settings['pack_script'])}, then once those "
                f"tasks finish: packsft merge {shlex.quote(str(out.path))}")


def _tasks_of(plan: Plan, units: list[int], array_size: int) -> list[int]:
    """The array tasks that hold any of these units."""
    wanted = set(units)
    return [task for task, indices in enumerate(assign_units(plan.units, array_size)) if wanted & set(indices)]
