"""Run a pack job: a deterministic plan of units, each packed into one shard, then merged.

    plan.py      the units of work (a file, or a row-group range of a big one) and their fingerprints
    unit.py      one unit in memory: read -> render -> split -> pack -> rows, then its shard written
    workers.py   units in a pool of processes; SIGTERM/Ctrl-C stop cleanly
    outdir.py    the output folder across runs: plan.json, resume, merge, status
    pipeline.py  `packsft pack`: plan, pack the missing units, merge
    slurm.py     the same plan as a SLURM array + an afterok merge job
    ray.py       the same plan as one Ray task per unit, then the merge (needs packsft[ray])
"""

from packsft.run.outdir import Status, merge, status
from packsft.run.pipeline import PackResult, run_pack
from packsft.run.ray import RayOptions, run_ray
from packsft.run.slurm import SlurmOptions, submit

__all__ = ["PackResult", "RayOptions", "SlurmOptions", "Status", "merge", "run_pack", "run_ray", "status", "submit"]
