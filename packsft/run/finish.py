"""Finish an output: which units are missing, the command that packs them the way OUT_DIR was run, and merge.

The command comes from the executor OUT_DIR/executor.json names (an output of a packsft before it: the
executor plan.json names), found by name among EXECUTORS; `packsft pack` when none is named.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packsft.errors import IncompleteOutputError
from packsft.run.executor import Executor
from packsft.run.local import LocalExecutor
from packsft.run.outdir import OutDir
from packsft.run.plan import Plan
from packsft.run.ray import RayExecutor
from packsft.run.slurm import SlurmExecutor
from packsft.write.layout import shard_name

EXECUTORS: dict[str, type[Executor]] = {cls.name: cls for cls in (LocalExecutor, SlurmExecutor, RayExecutor)}
LISTED_UNITS = 10  # units named in a message before "and N more"


def resume_hint(out: OutDir, plan: Plan, missing: list[int]) -> str:
    """The command that packs only the missing units (and how dataset.json then gets written)."""
    name, settings = out.executor_record() or (LocalExecutor.name, {})
    executor = EXECUTORS.get(name, LocalExecutor)  # one a newer packsft added: `packsft pack` still resumes
    return executor.resume_hint(out, plan, settings, missing)


def merge(out_dir: str | Path, max_reject_fraction: float | None = None) -> dict[str, Any]:
    """Check every planned unit is complete, then write rejects.jsonl and dataset.json from the manifests.

    An output with no chunks, or with more rejects than `max_reject_fraction` (default: the plan's
    config), is refused (run/outcome.py) and gets no dataset.json. The held-out split in OUT_DIR/eval
    (where there is one) is merged first.
    """
    out = OutDir(Path(out_dir))
    if out.eval.has_plan():
        finish(out.eval, max_reject_fraction)
    return finish(out, max_reject_fraction)


def finish(out: OutDir, max_reject_fraction: float | None = None) -> dict[str, Any]:
    """Write OUT_DIR's dataset.json (OutDir.write_dataset) once every unit of its plan is complete (not its held-out
    split's: `merge` finishes both)."""
    plan = out.read_plan()
    missing = out.incomplete_units(plan)
    if missing:
        raise IncompleteOutputError(
            f"{out.path}: {len(missing)} of {len(plan.units)} units are not complete (units {_listed(missing)}); "
            f"pack them with: {resume_hint(out, plan, missing)}"
        )
    return out.write_dataset(plan, max_reject_fraction)


def _listed(units: list[int]) -> str:
    more = f" and {len(units) - LISTED_UNITS} more" if len(units) > LISTED_UNITS else ""
    return ", ".join(shard_name(i) for i in units[:LISTED_UNITS]) + more


@dataclass
class Status:
    out_dir: Path
    units: int
    done: list[int]
    missing: list[int]
    failed: dict[int, str]  # unit -> why its last attempt failed (a subset of missing)
    running: list[int]  # missing units with a half-written folder: being packed now, or killed
    merged: bool
    command: str  # packs only the missing units

    def format(self) -> str:
        lines = [f"{self.out_dir}: {len(self.done)} of {self.units} units done, {len(self.missing)} missing"
                 f" ({len(self.failed)} failed, {len(self.running)} in progress or interrupted)"]
        for index, reason in sorted(self.failed.items()):
            lines.append(f"  failed {shard_name(index)}: {reason}")
        if self.missing:
            lines.append(f"  missing: {_listed(self.missing)}")
            lines.append("to pack only the missing units:")
            lines.append(f"  {self.command}")
        elif not self.merged:
            lines.append(f"all units done; write dataset.json with: packsft merge {shlex.quote(str(self.out_dir))}")
        else:
            lines.append("complete: dataset.json written")
        return "\n".join(lines)


def status(out_dir: str | Path) -> Status:
    """Which planned units are done, missing, failed or half-written."""
    out = OutDir(Path(out_dir))
    plan = out.read_plan()
    missing = out.incomplete_units(plan)
    leftovers = out.temporaries()
    running = [i for i in missing if i in leftovers]
    done = sorted(set(range(len(plan.units))) - set(missing))
    return Status(out.path, len(plan.units), done, missing, out.failures(missing), running,
                  out.has_dataset() and not missing, resume_hint(out, plan, missing) if missing else "")
