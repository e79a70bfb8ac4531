"""The Executor interface: what runs a plan's missing units, and how a rerun resumes the same way.

    run_pack (run/pipeline.py): plan -> plan.json -> executor.run(missing units) -> merge when all are complete
      LocalExecutor  (run/local.py)   a pool of worker processes on this machine (`packsft pack`)
      SlurmExecutor  (run/slurm.py)   an array job whose tasks are `packsft pack --num-tasks N --task-index I`,
                                      then an afterok merge job (`packsft slurm submit`)
      RayExecutor    (run/ray.py)     one Ray task per unit on a cluster (`packsft ray submit`)

Every executor runs the same plan and each unit's shard is the same bytes wherever it was packed; they
differ only in where the units run and in the command that resumes them, which `packsft status` and
`packsft merge` print. An executor that is not `packsft pack` keeps what that command needs (its
settings) in OUT_DIR/executor.json; run/finish.py reads it back by the executor's `name`.
"""

from __future__ import annotations

import contextlib
import shlex
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

from packsft.config import DEFAULT_LONG, PackConfig
from packsft.render.tokenizer import PackTokenizer
from packsft.run.outdir import OutDir
from packsft.run.plan import DEFAULT_UNIT_BYTES, Plan, Unit
from packsft.run.unit import UnitJob


class Executor(ABC):
    """Runs the missing units of a plan somewhere; each unit writes its own shard into job.out."""

    name: ClassVar[str]  # in executor.json, and how run/finish.py finds the class again

    def prepare(self, data: list[str], out_dir: str | Path,
                config: PackConfig) -> tuple[list[str], OutDir, PackConfig]:
        """DATA, OUT_DIR and the config as the processes that pack the units must name them; raises before
        anything is written when this executor cannot run here."""
        return data, OutDir(Path(out_dir)), config

    def session(self) -> AbstractContextManager[None]:
        """Held from planning until the merge (a connection to a cluster)."""
        return contextlib.nullcontext()

    @abstractmethod
    def run(self, plan: Plan, units: list[Unit], job: UnitJob, tokenizer: PackTokenizer, quiet: bool) -> None:
        """Pack `units` (missing units of `plan`; fingerprints in plan.fingerprints) into job.out, or have
        them packed (an array job returns once it is queued)."""

    def settings(self, out: OutDir, plan: Plan) -> dict[str, Any] | None:
        """What resume_hint will need, kept in executor.json; None keeps the record an earlier run wrote (a
        `packsft pack` run inside a SLURM array leaves the array's record)."""
        return None

    @classmethod
    @abstractmethod
    def resume_hint(cls, out: OutDir, plan: Plan, settings: dict[str, Any], missing: list[int]) -> str:
        """The command that packs the `missing` units this way (and how dataset.json then gets written)."""


def rerun_command(command: list[str], out: OutDir, plan: Plan, options: list[str]) -> str:
    """`command DATA... OUT_DIR options` with the pack flags of the plan: what repacks its missing units."""
    return shlex.join([*command, *plan.data_inputs, str(out.path), *options, *plan_flags(plan)])


def plan_flags(plan: Plan) -> list[str]:
    """The `pack` flags that reproduce the plan's units."""
    # --template auto chooses chat exactly where the tokenizer has a chat template (its own, or --chat-template's).
    auto = "chat" if plan.tokenizer.get("chat_template_sha256") else "roles"
    return pack_flags(plan.pack_config(), plan.unit_bytes, auto_template=auto)


def pack_flags(config: PackConfig, unit_bytes: int, *, auto_template: str | None = None) -> list[str]:
    """The `pack` flags that reproduce `config` (only those that differ from the defaults).

    Args:
        auto_template: the template --template auto gives with this tokenizer: no flag names it.
    """
    defaults, flags = PackConfig(), []
    for f in fields(PackConfig):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name) or value is None or (f.name == "long" and value == DEFAULT_LONG[config.strategy]):
            continue
        if f.name == "encoder":  # the plan holds the encoder auto chose; a rerun chooses again, same bytes
            continue
        if f.name == "template" and value == auto_template:  # the plan holds the template auto chose
            continue
        flag = "--" + f.name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    if unit_bytes != DEFAULT_UNIT_BYTES:
        flags += ["--unit-mib", f"{unit_bytes / (1 << 20):g}"]
    return flags
