"""Run a pack job: a deterministic plan of units, the missing ones packed by an executor, then merged.

    plan.py      Unit, Plan and planning: the units of DATA (a file, or a row-group range of a big one), array tasks
    identity.py  what identifies a unit: the digest of the bytes it reads, its fingerprint
    outdir.py    OutDir, OUT_DIR across runs: plan.json written or resumed, executor.json, each unit's state, dataset.json
    unit.py      one unit in a worker: the job's tokenizer, the unit packed in memory, its shard written
    outcome.py   refuse an output with no chunks or too many rejects (at merge)
    executor.py  the Executor interface: run a plan's missing units, and the command that resumes them
    local.py     LocalExecutor: a pool of processes on this machine
    parent_death.py  the pool's fork server and workers die with the parent, even under kill -9
    slurm.py     SlurmExecutor: a SLURM array of `packsft pack --num-tasks N --task-index I` + an afterok merge job
    ray.py       RayExecutor: one Ray task per unit (needs the ray extra)
    finish.py    status, resume hints (the executor found by name) and merge
    pipeline.py  run_pack: plan, run the missing units on an executor (SIGTERM/Ctrl-C stop cleanly), merge; the held-out split
    preview.py   pack --dry-run: the first records rendered and marked, counted, nothing written
    repack.py    packsft repack: another row layout from the renderings an output kept (store/rendered.py), none read
    mix.py       --mix: each file's source, the tokens of each source, its rate
    fork_server.py  the local workers' fork server, started as `packsft pack` begins
    prebuild.py  imported by the fork server: builds the tokenizer's gigatoken once, for every worker it forks

The names below load on first use (PEP 562): `packsft pack` imports fork_server.py before the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packsft.run.executor import Executor
    from packsft.run.finish import Status, merge, status
    from packsft.run.local import LocalExecutor
    from packsft.run.outdir import OutDir
    from packsft.run.pipeline import PackResult, run_pack
    from packsft.run.ray import RayExecutor, RayOptions
    from packsft.run.slurm import SlurmExecutor, SlurmOptions

# Each public name and the module it comes from.
_SOURCES = {
    "Executor": "executor", "LocalExecutor": "local", "OutDir": "outdir", "PackResult": "pipeline",
    "RayExecutor": "ray", "RayOptions": "ray", "SlurmExecutor": "slurm", "SlurmOptions": "slurm", "Status": "finish",
    "merge": "finish", "run_pack": "pipeline", "status": "finish",
}

__all__ = ["Executor", "LocalExecutor", "OutDir", "PackResult", "RayExecutor", "RayOptions", "SlurmExecutor",
           "SlurmOptions", "Status", "merge", "run_pack", "status"]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'packsft.run' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"packsft.run.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value
