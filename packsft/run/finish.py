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
from packsft.run.outdir import (
    EVAL_DIR,
    failed_path,
    incomplete_units,
    read_executor_record,
    temporaries,
    write_dataset,
)
from packsft.run.plan import PLAN_JSON, Plan, read_plan
from packsft.run.ray import RayExecutor
from packsft.run.slurm import SlurmExecutor
from packsft.write.layout import DATASET_JSON, shard_name

EXECUTORS: dict[str, type[Executor]] = {cls.name: cls for cls in (LocalExecutor, SlurmExecutor, RayExecutor)}
LISTED_UNITS = 10  # units named in a message before "and N more"


def resume_hint(out_dir: Path, plan: Plan, missing: list[int]) -> str:
    """The command that packs only the missing units (and how dataset.json then gets written)."""
    name, settings = read_executor_record(out_dir) or (LocalExecutor.name, {})
    executor = EXECUTORS.get(name, LocalExecutor)  # one a newer packsft added: `packsft pack` still resumes
    return executor.resume_hint(out_dir, plan, settings, missing)


def merge(out_dir: str | Path, max_reject_fraction: float | None = None, *, held_out: bool = True) -> dict[str, Any]:
    """Check every planned unit is complete, then write rejects.jsonl and dataset.json from the manifests.

    An output with no chunks, or with more rejects than `max_reject_fraction` (default: the plan's
    config), is refused (run/outcome.py) and gets no dataset.json. With `held_out`, the held-out split in
    OUT_DIR/eval (where there is one) is merged first.
    """

    out_dir = Path(out_dir)
    if held_out and (out_dir / EVAL_DIR / PLAN_JSON).exists():
        merge(out_dir / EVAL_DIR, max_reject_fraction, held_out=False)
    plan = read_plan(out_dir)
    missing = incomplete_units(out_dir, plan)
    if missing:
        raise IncompleteOutputError(
            f"{out_dir}: {len(missing)} of {len(plan.units)} units are not complete (units {_listed(missing)}); "
            f"pack them with: {resume_hint(out_dir, plan, missing)}"
        )
    return write_dataset(out_dir, plan, max_reject_fraction)


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
    out_dir = Path(out_dir)
    plan = read_plan(out_dir)
    missing = incomplete_units(out_dir, plan)
    failed = {i: failed_path(out_dir, i).read_text().strip() for i in missing if failed_path(out_dir, i).exists()}
    leftovers = temporaries(out_dir)
    running = [i for i in missing if i in leftovers]
    done = sorted(set(range(len(plan.units))) - set(missing))
    return Status(out_dir, len(plan.units), done, missing,
                  failed, running, (out_dir / DATASET_JSON).exists() and not missing,
                  resume_hint(out_dir, plan, missing) if missing else "")
