"""OUT_DIR across runs, owned by one `OutDir`: its plan, its executor's record, which units are complete, dataset.json.

    OUT_DIR/
      plan.json                 written first: config, tokenizer identity, every unit + fingerprint
      executor.json             how it is run when not by `packsft pack` (SLURM scripts, Ray address)
      rendered/                 the rendered-token store, unless `pack --store` names another (store/rendered.py)
      shards/NNNNN/             complete units (renamed into place when complete)
        manifest.json           ... "fingerprint": the unit's fingerprint when it was packed
        rejects.jsonl           the unit's rejected records
      shards/.tmp-NNNNN-PID/    a unit being written (removed by the next run of that unit)
      shards/.failed-NNNNN      why the last attempt at a unit failed
      rejects.jsonl, dataset.json   written by write_dataset, once every planned unit is complete
      eval/                     the held-out split: an OUT_DIR of its own (`OutDir.eval`)

A unit is complete when shards/NNNNN/manifest.json holds the fingerprint the plan gives it. Writing
dataset.json reads only manifests (metadata) and concatenates the small per-unit reject lists: it
never copies array bytes, so it takes seconds for any size of output.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from packsft.errors import IncompleteOutputError, OutputError, UnusableOutputError
from packsft.pack.rows import Chunks
from packsft.run.outcome import check_outcome
from packsft.run.plan import Plan, Unit
from packsft.store.rendered import STORE_DIR
from packsft.write.layout import DATASET_JSON, MARKER, REJECTS_JSONL, SHARDS_DIR, read_manifest, shard_name
from packsft.write.writer import (
    atomic_write_json,
    atomic_write_stream,
    build_dataset_manifest,
    prepare_output,
    write_shard,
)

PLAN_JSON = "plan.json"
EXECUTOR_JSON = "executor.json"
# The held-out split (--eval-fraction, --eval-records): a complete packsft output of its own inside OUT_DIR.
EVAL_DIR = "eval"
# A plan.json written before executor.json existed kept an executor's settings under the executor's name; when
# both were set, `slurm` named the command that resumes.
PLAN_EXECUTOR_KEYS = ("slurm", "ray")
FAILED_PREFIX = ".failed-"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class OutDir:
    """One output folder and the files that say where it stands across runs (picklable: workers get it in their
    UnitJob). Every file name of OUT_DIR outside the shards' own contents (write/layout.py) is joined here."""

    path: Path

    @property
    def plan_json(self) -> Path:
        return self.path / PLAN_JSON

    @property
    def eval(self) -> OutDir:
        """The held-out split's own output, OUT_DIR/eval."""
        return OutDir(self.path / EVAL_DIR)

    @property
    def default_store(self) -> Path:
        """Where its units' renderings are kept unless `pack --store` names another store."""
        return self.path / STORE_DIR

    # plan.json

    def has_plan(self) -> bool:
        return self.plan_json.exists()

    def read_plan(self) -> Plan:
        if not self.has_plan():
            raise OutputError(f"{self.path}: no {PLAN_JSON}; pass the OUT_DIR of a `packsft pack` or "
                              "`packsft slurm submit`")
        try:
            return Plan.from_dict(json.loads(self.plan_json.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise OutputError(f"{self.plan_json}: unreadable plan ({exc}); pack again with --overwrite") from None

    def mix_tokens(self) -> dict[str, int]:
        """The --mix token counts its plan.json holds (none where it has no plan or an unreadable one)."""
        try:
            counts = json.loads(self.plan_json.read_text()).get("mix_tokens") or {}
        except (OSError, ValueError, AttributeError):
            return {}
        return {key: value for key, value in counts.items() if isinstance(value, int)}

    def prepare(self, plan: Plan, overwrite: bool, executor: str, settings: dict[str, Any] | None) -> None:
        """Create OUT_DIR for `plan`, or accept it for resuming when it was started with the same identity.

        Args:
            executor, settings: the executor's name and what its resume_hint needs, kept in executor.json; settings
                None keeps the record an earlier run wrote (a `packsft pack` run inside a SLURM array leaves the
                array's record).
        """
        self._write_plan(plan, overwrite)
        if settings is not None:
            self.write_executor_record(executor, settings)

    def _write_plan(self, plan: Plan, overwrite: bool) -> None:
        if overwrite or not (self.path / MARKER).exists():
            # Refuses folders that are not ours, clears ours on overwrite but for the rendered-token store: a pack
            # that changes only how rows are built finds its units there.
            prepare_output(self.path, overwrite, keep=frozenset({STORE_DIR}))
        elif self.has_plan():
            if self._accept_resume(plan):
                return
        elif self.has_dataset() or any(self.shard_dirs()):
            raise OutputError(f"{self.path}: already holds a packsft output. Pass --overwrite to replace it")
        atomic_write_json(self.plan_json, plan.to_dict())

    def _accept_resume(self, plan: Plan) -> bool:
        """Accept the plan.json there for resuming with `plan` (refuse one made differently); True when it already
        is `plan`: nothing to write."""
        earlier = self.read_plan()
        old, new = earlier.identity(), plan.identity()
        if old != new:
            changed = ", ".join(_differences(old, new))
            raise OutputError(
                f"{self.path}: already holds a packsft output made differently ({changed}). "
                "Rerun with the same settings to resume it, or pass --overwrite to replace it"
            )
        if earlier.identity_version < plan.identity_version and earlier.fingerprints != plan.fingerprints \
                and self.shard_dirs():
            print(f"packsft: {self.path} was planned by an older packsft, which identified units by file paths and "
                  "mtimes; its units are packed again, identified by content from now on", file=sys.stderr)
        if earlier.to_dict() == plan.to_dict():
            return True  # array tasks starting together find the plan `slurm submit` wrote: nothing to write
        record = self.executor_record()
        if record is not None and not (self.path / EXECUTOR_JSON).exists():
            self.write_executor_record(*record)  # kept when the plan.json that held it is rewritten
        return False

    # executor.json

    def executor_record(self) -> tuple[str, dict[str, Any]] | None:
        """(executor name, its settings) that OUT_DIR was last run with, or None when only `packsft pack` ran it."""
        path = self.path / EXECUTOR_JSON
        try:
            if path.exists():
                record = json.loads(path.read_text())
                return str(record.pop("executor")), record
            plan = json.loads(self.plan_json.read_text())
        except (OSError, json.JSONDecodeError, KeyError, AttributeError):
            return None
        return next(((key, plan[key]) for key in PLAN_EXECUTOR_KEYS if plan.get(key)), None)

    def write_executor_record(self, name: str, settings: dict[str, Any]) -> None:
        atomic_write_json(self.path / EXECUTOR_JSON, {"executor": name, **settings})

    # shards/: each unit's state

    def shard_dirs(self) -> list[Path]:
        shards = self.path / SHARDS_DIR
        return [p for p in shards.iterdir() if not p.name.startswith(".")] if shards.is_dir() else []

    def unit_complete(self, index: int, fingerprint: str) -> bool:
        try:
            manifest = read_manifest(self.path, index)
        except (json.JSONDecodeError, OSError):
            return False
        return manifest is not None and manifest.get("fingerprint") == fingerprint

    def incomplete_units(self, plan: Plan) -> list[int]:
        return [u.index for u, f in zip(plan.units, plan.fingerprints) if not self.unit_complete(u.index, f)]

    def temporaries(self) -> dict[int, list[Path]]:
        """Half-written shard folders (shards/.tmp-NNNNN-PID) by unit index."""
        found: dict[int, list[Path]] = {}
        shards = self.path / SHARDS_DIR
        for path in shards.iterdir() if shards.is_dir() else []:
            index = path.name[len(TMP_PREFIX):].split("-")[0]
            if path.name.startswith(TMP_PREFIX) and index.isdigit():
                found.setdefault(int(index), []).append(path)
        return found

    def units_to_pack(self, plan: Plan, indices: list[int]) -> list[Unit]:
        """The units among `indices` (a run's share of the plan) that are not complete, with the half-written folders
        an earlier run left for them removed; dataset.json goes when there are any."""
        self.remove_temporaries(indices)
        todo = [plan.units[i] for i in indices if not self.unit_complete(i, plan.fingerprints[i])]
        if todo:
            self.clear_dataset()  # the output is no longer complete
        return todo

    def remove_temporaries(self, indices: list[int]) -> None:
        """Remove the half-written folders a killed run left for these units (only these: others may be running)."""
        leftovers = self.temporaries()
        for index in indices:
            for tmp in leftovers.get(index, []):
                shutil.rmtree(tmp, ignore_errors=True)

    def write_shard(self, index: int, chunks: Chunks, *, vocab_size: int, output_format: str,
                    manifest: dict[str, Any], extra_files: dict[str, bytes]) -> dict[str, Any]:
        """Write unit `index`'s shard (write/writer.py); returns its manifest."""
        return write_shard(self.path, index, chunks, vocab_size=vocab_size, output_format=output_format,
                           manifest=manifest, extra_files=extra_files)

    def record_failure(self, index: int, reason: str) -> None:
        """Note why the attempt at unit `index` failed, for `packsft status`."""
        with contextlib.suppress(OSError):  # a full disk may refuse even this note; the error still goes up
            self._failed(index).write_text(f"{reason}\n")

    def clear_failure(self, index: int) -> None:
        self._failed(index).unlink(missing_ok=True)

    def failures(self, indices: list[int]) -> dict[int, str]:
        """Why the last attempt at each of these units failed, for those with a failure noted."""
        return {i: self._failed(i).read_text().strip() for i in indices if self._failed(i).exists()}

    def _failed(self, index: int) -> Path:
        return self.path / SHARDS_DIR / f"{FAILED_PREFIX}{shard_name(index)}"

    # dataset.json

    def has_dataset(self) -> bool:
        return (self.path / DATASET_JSON).exists()

    def clear_dataset(self) -> None:
        """Remove dataset.json: the output is no longer complete."""
        (self.path / DATASET_JSON).unlink(missing_ok=True)

    def write_dataset(self, plan: Plan, max_reject_fraction: float | None = None) -> dict[str, Any]:
        """Write rejects.jsonl and dataset.json from the manifests of a plan whose units are all complete.

        An output with no chunks, or with more rejects than `max_reject_fraction` (default: the plan's
        config), is refused (run/outcome.py) and gets no dataset.json.
        """
        manifests = [m for unit in plan.units if (m := read_manifest(self.path, unit.index)) is not None]
        if len(manifests) != len(plan.units):
            raise IncompleteOutputError(f"{self.path}: a shard was removed while merging; run "
                                        f"`packsft merge {self.path}` again")
        self._merge_rejects(len(plan.units))
        for extra in self.shard_dirs():  # shards of an earlier plan that had more units
            if not extra.name.isdigit() or int(extra.name) >= len(plan.units):
                shutil.rmtree(extra, ignore_errors=True)
        dataset = build_dataset_manifest(manifests, plan.pack_config(), plan.tokenizer, plan.data_dir,
                                         plan.skipped_files)
        if plan.chat_history:  # what the summary advises about turns a chat template rewrites in history
            dataset["chat_history"] = plan.chat_history
        limit = plan.pack_config().max_reject_fraction if max_reject_fraction is None else max_reject_fraction
        try:
            check_outcome(self.path, dataset, limit)
        except UnusableOutputError:
            self.clear_dataset()  # one an earlier merge wrote would look complete
            raise
        atomic_write_json(self.path / DATASET_JSON, dataset)
        return dataset

    def _merge_rejects(self, units: int) -> None:
        """Concatenate the per-unit reject lists in unit order, streaming (never all in memory)."""

        def concatenate(handle: BinaryIO) -> None:
            for index in range(units):
                part = self.path / SHARDS_DIR / shard_name(index) / REJECTS_JSONL
                if part.exists():
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, handle)

        atomic_write_stream(self.path / REJECTS_JSONL, concatenate)


def read_plan(out_dir: str | Path) -> Plan:
    """The plan in OUT_DIR/plan.json (OutDir.read_plan)."""
    return OutDir(Path(out_dir)).read_plan()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    flat_old = {**old["config"], **{k: v for k, v in old.items() if k != "config"}}
    flat_new = {**new["config"], **{k: v for k, v in new.items() if k != "config"}}
    return [f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in sorted(flat_new) if flat_old.get(k) != flat_new.get(k)]
