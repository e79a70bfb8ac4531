"""The state of an output folder across runs: its plan, its executor's record, which units are complete.

    OUT_DIR/
      plan.json                 written first: config, tokenizer identity, every unit + fingerprint
      executor.json             how it is run when not by `packsft pack` (SLURM scripts, Ray address)
      shards/NNNNN/             complete units (renamed into place when complete)
        manifest.json           ... "fingerprint": the unit's fingerprint when it was packed
        rejects.jsonl           the unit's rejected records
      shards/.tmp-NNNNN-PID/    a unit being written (removed by the next run of that unit)
      shards/.failed-NNNNN      why the last attempt at a unit failed
      rejects.jsonl, dataset.json   written by write_dataset, once every planned unit is complete

A unit is complete when shards/NNNNN/manifest.json holds the fingerprint the plan gives it. Writing
dataset.json reads only manifests (metadata) and concatenates the small per-unit reject lists: it
never copies array bytes, so it takes seconds for any size of output.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, BinaryIO

from packsft.errors import IncompleteOutputError, OutputError
from packsft.run.outcome import check_outcome
from packsft.run.plan import PLAN_JSON, Plan, read_plan
from packsft.store.rendered import STORE_DIR
from packsft.write.layout import DATASET_JSON, MARKER, REJECTS_JSONL, SHARDS_DIR, read_manifest, shard_name
from packsft.write.writer import (
    atomic_write_json,
    atomic_write_stream,
    build_dataset_manifest,
    prepare_output,
)

EXECUTOR_JSON = "executor.json"
# The held-out split (--eval-fraction, --eval-records): a complete packsft output of its own inside OUT_DIR.
EVAL_DIR = "eval"
# A plan.json written before executor.json existed kept an executor's settings under the executor's name; when
# both were set, `slurm` named the command that resumes.
PLAN_EXECUTOR_KEYS = ("slurm", "ray")
FAILED_PREFIX = ".failed-"
TMP_PREFIX = ".tmp-"


def prepare_plan(out_dir: Path, plan: Plan, overwrite: bool) -> None:
    """Create OUT_DIR for `plan`, or accept it for resuming when it was started with the same identity."""
    if overwrite or not (out_dir / MARKER).exists():
        # Refuses folders that are not ours, clears ours on overwrite but for the rendered-token store: a pack that
        # changes only how rows are built finds its units there.
        prepare_output(out_dir, overwrite, keep=frozenset({STORE_DIR}))
    elif (out_dir / PLAN_JSON).exists():
        earlier = read_plan(out_dir)
        old, new = earlier.identity(), plan.identity()
        if old != new:
            changed = ", ".join(_differences(old, new))
            raise OutputError(
                f"{out_dir}: already holds a packsft output made differently ({changed}). "
                "Rerun with the same settings to resume it, or pass --overwrite to replace it"
            )
        if earlier.identity_version < plan.identity_version and earlier.fingerprints != plan.fingerprints \
                and shard_dirs(out_dir):
            print(f"packsft: {out_dir} was planned by an older packsft, which identified units by file paths and "
                  "mtimes; its units are packed again, identified by content from now on", file=sys.stderr)
        if earlier.to_dict() == plan.to_dict():
            return  # array tasks starting together find the plan `slurm submit` wrote: nothing to write
        record = read_executor_record(out_dir)
        if record is not None and not (out_dir / EXECUTOR_JSON).exists():
            write_executor_record(out_dir, *record)  # kept when the plan.json that held it is rewritten
    elif (out_dir / DATASET_JSON).exists() or any(shard_dirs(out_dir)):
        raise OutputError(f"{out_dir}: already holds a packsft output. Pass --overwrite to replace it")
    atomic_write_json(out_dir / PLAN_JSON, plan.to_dict())


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    flat_old = {**old["config"], **{k: v for k, v in old.items() if k != "config"}}
    flat_new = {**new["config"], **{k: v for k, v in new.items() if k != "config"}}
    return [f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in sorted(flat_new) if flat_old.get(k) != flat_new.get(k)]


def read_executor_record(out_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(executor name, its settings) that OUT_DIR was last run with, or None when only `packsft pack` ran it."""
    path = out_dir / EXECUTOR_JSON
    try:
        if path.exists():
            record = json.loads(path.read_text())
            return str(record.pop("executor")), record
        plan = json.loads((out_dir / PLAN_JSON).read_text())
    except (OSError, json.JSONDecodeError, KeyError, AttributeError):
        return None
    return next(((key, plan[key]) for key in PLAN_EXECUTOR_KEYS if plan.get(key)), None)


def write_executor_record(out_dir: Path, name: str, settings: dict[str, Any]) -> None:
    atomic_write_json(out_dir / EXECUTOR_JSON, {"executor": name, **settings})


def shard_dirs(out_dir: Path) -> list[Path]:
    shards = out_dir / SHARDS_DIR
    return [p for p in shards.iterdir() if not p.name.startswith(".")] if shards.is_dir() else []


def unit_complete(out_dir: Path, index: int, fingerprint: str) -> bool:
    try:
        manifest = read_manifest(out_dir, index)
    except (json.JSONDecodeError, OSError):
        return False
    return manifest is not None and manifest.get("fingerprint") == fingerprint


def incomplete_units(out_dir: Path, plan: Plan) -> list[int]:
    return [u.index for u, f in zip(plan.units, plan.fingerprints) if not unit_complete(out_dir, u.index, f)]


def temporaries(out_dir: Path) -> dict[int, list[Path]]:
    """Half-written shard folders (shards/.tmp-NNNNN-PID) by unit index."""
    found: dict[int, list[Path]] = {}
    shards = out_dir / SHARDS_DIR
    for path in shards.iterdir() if shards.is_dir() else []:
        index = path.name[len(TMP_PREFIX):].split("-")[0]
        if path.name.startswith(TMP_PREFIX) and index.isdigit():
            found.setdefault(int(index), []).append(path)
    return found


def remove_temporaries(out_dir: Path, indices: list[int]) -> None:
    """Remove the half-written folders a killed run left for these units (only these: others may be running)."""
    leftovers = temporaries(out_dir)
    for index in indices:
        for tmp in leftovers.get(index, []):
            shutil.rmtree(tmp, ignore_errors=True)


def failed_path(out_dir: Path, index: int) -> Path:
    return out_dir / SHARDS_DIR / f"{FAILED_PREFIX}{shard_name(index)}"


def write_dataset(out_dir: Path, plan: Plan, max_reject_fraction: float | None = None) -> dict[str, Any]:
    """Write rejects.jsonl and dataset.json from the manifests of a plan whose units are all complete.

    An output with no chunks, or with more rejects than `max_reject_fraction` (default: the plan's
    config), is refused (run/outcome.py) and gets no dataset.json.
    """
    manifests = [m for unit in plan.units if (m := read_manifest(out_dir, unit.index)) is not None]
    if len(manifests) != len(plan.units):
        raise IncompleteOutputError(f"{out_dir}: a shard was removed while merging; run `packsft merge {out_dir}` again")
    _merge_rejects(out_dir, len(plan.units))
    for extra in shard_dirs(out_dir):  # shards of an earlier plan that had more units
        if not extra.name.isdigit() or int(extra.name) >= len(plan.units):
            shutil.rmtree(extra, ignore_errors=True)
    dataset = build_dataset_manifest(manifests, plan.pack_config(), plan.tokenizer, plan.data_dir,
                                     plan.skipped_files)
    if plan.chat_history:  # what the summary advises about turns a chat template rewrites in history
        dataset["chat_history"] = plan.chat_history
    limit = plan.pack_config().max_reject_fraction if max_reject_fraction is None else max_reject_fraction
    check_outcome(out_dir, dataset, limit)
    atomic_write_json(out_dir / DATASET_JSON, dataset)
    return dataset


def _merge_rejects(out_dir: Path, units: int) -> None:
    """Concatenate the per-unit reject lists in unit order, streaming (never all in memory)."""

    def concatenate(handle: BinaryIO) -> None:
        for index in range(units):
            part = out_dir / SHARDS_DIR / shard_name(index) / REJECTS_JSONL
            if part.exists():
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, handle)

    atomic_write_stream(out_dir / REJECTS_JSONL, concatenate)
