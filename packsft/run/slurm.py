"""Run a pack as a SLURM job array plus an `afterok` merge job; no coordinator of packsft's own.

    packsft slurm submit DATA OUT --array-size 4
      OUT/plan.json                      written here, before anything is queued
      OUT/slurm/pack.sbatch   --array=0-3 task i: packsft pack ... --num-shards 4 --shard-index i
      OUT/slurm/merge.sbatch  --dependency=afterok:<array job>: packsft merge OUT
      OUT/slurm/logs/                    one log per task

The array tasks share nothing but the output folder: each writes the shards of its units, and
`--requeue` is safe because a requeued task skips the units it already completed. The scripts call
the same Python that ran `submit` (`sys.executable -m packsft`), with this packsft on PYTHONPATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packsft.config import PackConfig
from packsft.errors import PacksftError
from packsft.run.outdir import pack_flags, prepare_plan
from packsft.run.pipeline import make_plan
from packsft.run.plan import DEFAULT_UNIT_BYTES

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


def array_task_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """--num-shards/--shard-index, defaulting to SLURM_ARRAY_TASK_COUNT/_ID inside an array task."""
    env = os.environ
    if num_shards is None:
        num_shards = int(env["SLURM_ARRAY_TASK_COUNT"]) if env.get("SLURM_ARRAY_TASK_COUNT", "").isdigit() else 1
    if shard_index is None:
        shard_index = int(env["SLURM_ARRAY_TASK_ID"]) if env.get("SLURM_ARRAY_TASK_ID", "").isdigit() and num_shards > 1 else 0
    return num_shards, shard_index


def _header(job_name: str, options: SlurmOptions, log: Path, cpus: int) -> list[str]:
    lines = [f"#SBATCH --job-name={job_name}", f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --output={log}",
             "#SBATCH --open-mode=append", "#SBATCH --requeue"]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.time:
        lines.append(f"#SBATCH --time={options.time}")
    return lines


def write_scripts(data_dir: Path, out_dir: Path, pack_flags: list[str], options: SlurmOptions) -> tuple[Path, Path]:
    """Write OUT/slurm/pack.sbatch (the array) and OUT/slurm/merge.sbatch; returns their paths."""
    folder = out_dir.resolve() / SLURM_DIR
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    package_parent = shlex.quote(str(Path(__file__).resolve().parents[2]))
    array = f"0-{options.array_size - 1}" + (f"%{options.throttle}" if options.throttle else "")
    out = shlex.quote(str(out_dir.resolve()))
    pack_cmd = shlex.join(["-m", "packsft", "pack", str(data_dir.resolve()), str(out_dir.resolve()), *pack_flags,
                           "--num-shards", str(options.array_size), "--workers", str(options.workers), "--quiet"])
    common = ["set -euo pipefail", f"export PYTHONPATH={package_parent}${{PYTHONPATH:+:$PYTHONPATH}}"]
    pack = [
        "#!/bin/bash",
        "# packsft: one array task per shard of the plan in OUT/plan.json (written by `packsft slurm submit`).",
        f"# Rerun only some tasks with: sbatch --array=1,3 {folder / PACK_SCRIPT}",
        f"#SBATCH --array={array}",
        *_header("packsft-pack", options, folder / "logs" / "pack-%A_%a.log", options.cpus_per_task),
        "",
        *common,
        "# The tokenizer's threads stay inside this task's CPUs.",
        "export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        f'exec {python} {pack_cmd} --shard-index "$SLURM_ARRAY_TASK_ID"',
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


def submit(data_dir: str | Path, out_dir: str | Path, config: PackConfig, options: SlurmOptions, *,
           unit_bytes: int | None = None, overwrite: bool = False) -> Submission:
    """Plan the output, write the scripts, submit the array and its merge job."""

    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)  # the tasks may start elsewhere
    unit_bytes = unit_bytes or DEFAULT_UNIT_BYTES
    plan, _ = make_plan(data_dir, out_dir, config, unit_bytes)
    options = SlurmOptions(**{**options.__dict__, "array_size": max(1, min(options.array_size, len(plan.units)))})
    flags = pack_flags(config, unit_bytes)
    folder = out_dir.resolve() / SLURM_DIR
    plan.slurm = {"array_size": options.array_size, "pack_script": str(folder / PACK_SCRIPT),
                  "merge_script": str(folder / MERGE_SCRIPT)}
    prepare_plan(out_dir, plan, overwrite)  # before the scripts: --overwrite clears the folder
    pack_script, merge_script = write_scripts(data_dir, out_dir, flags, options)
    pack_job = sbatch(str(pack_script))
    merge_job = sbatch(f"--dependency=afterok:{pack_job}", "--kill-on-invalid-dep=yes", str(merge_script))
    return Submission(pack_job, merge_job, pack_script, merge_script)
