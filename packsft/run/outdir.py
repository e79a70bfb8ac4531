"""The state of an output folder across runs: its plan, which units are complete, merge and status.

    OUT_DIR/
      plan.json                 written first: config, tokenizer identity, every unit + fingerprint
      shards/NNNNN/             complete units (renamed into place when complete)
        manifest.json           ... "fingerprint": the unit's fingerprint when it was packed
        rejects.jsonl           the unit's rejected records
      shards/.tmp-NNNNN-PID/    a unit being written (removed by the next run of that unit)
      shards/.failed-NNNNN      why the last attempt at a unit failed
      rejects.jsonl, dataset.json   written by merge, once every planned unit is complete

A unit is complete when shards/NNNNN/manifest.json holds the fingerprint the plan gives it. Merge
reads only manifests (metadata) and concatenates the small per-unit reject lists: it never copies
array bytes, so it takes seconds for any size of output.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

from packsft.config import DEFAULT_LONG, PackConfig
from packsft.errors import IncompleteOutputError, OutputError
from packsft.run.outcome import check_outcome
from packsft.run.plan import (
    DEFAULT_UNIT_BYTES,
    IDENTITY_VERSION,
    PLAN_JSON,
    PLAN_VERSION,
    Unit,
    assign_units,
    fingerprint_config,
)
from packsft.version import __version__
from packsft.write.layout import DATASET_JSON, MARKER, REJECTS_JSONL, SHARDS_DIR, read_manifest, shard_name
from packsft.write.writer import (
    atomic_write_json,
    atomic_write_stream,
    build_dataset_manifest,
    prepare_output,
)

FAILED_PREFIX = ".failed-"
TMP_PREFIX = ".tmp-"
LISTED_UNITS = 10  # units named in an error message before "and N more"


@dataclass
class Plan:
    """What plan.json holds."""

    data_dir: str
    config: dict[str, Any]
    tokenizer: dict[str, Any]  # PackTokenizer.identity()
    unit_bytes: int
    units: list[Unit]
    fingerprints: list[str]
    slurm: dict[str, Any] | None = None  # set by `packsft slurm submit`: scripts and array size
    skipped_files: list[dict[str, str]] = field(default_factory=list)  # unreadable, under --skip-bad-files
    inputs: list[str] = field(default_factory=list)  # the DATA arguments (absolute); [data_dir] if empty
    ray: dict[str, Any] | None = None  # set by `packsft ray submit`: the cluster address it was given
    identity_version: int = IDENTITY_VERSION  # how its units' fingerprints identify them (plan.IDENTITY_VERSION)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_version": PLAN_VERSION, "packsft_version": __version__, "data_dir": self.data_dir,
            "config": self.config, "tokenizer": self.tokenizer, "unit_bytes": self.unit_bytes,
            "units": [{**u.to_dict(), "fingerprint": f} for u, f in zip(self.units, self.fingerprints)],
            "slurm": self.slurm, "skipped_files": self.skipped_files, "inputs": self.data_inputs, "ray": self.ray,
            "identity_version": self.identity_version,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Plan:
        units = [Unit.from_dict({k: v for k, v in u.items() if k != "fingerprint"}) for u in record["units"]]
        return cls(record["data_dir"], record["config"], record["tokenizer"], record["unit_bytes"], units,
                   [u["fingerprint"] for u in record["units"]], record.get("slurm"), record.get("skipped_files", []),
                   record.get("inputs", []), record.get("ray"), record.get("identity_version", 1))

    @property
    def data_inputs(self) -> list[str]:
        """The DATA arguments of the run (plans written before they were recorded hold data_dir only)."""
        return self.inputs or [self.data_dir]

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the plan. Not where the inputs are (paths stay in plan.json for people
        and `verify --deep`): units are identified by content, so inputs moved, copied or reached by another path
        resume, and changed ones are redone."""
        config = self.pack_config()
        return {"config": fingerprint_config(config),
                "tokenizer": self.tokenizer["fingerprint"], "unit_bytes": self.unit_bytes,
                "group_files": config.group_files}

    def pack_config(self) -> PackConfig:
        known = {f.name for f in fields(PackConfig)}
        return PackConfig(**{k: v for k, v in self.config.items() if k in known})


def read_plan(out_dir: Path) -> Plan:
    path = Path(out_dir) / PLAN_JSON
    if not path.exists():
        raise OutputError(f"{out_dir}: no {PLAN_JSON}; pass the OUT_DIR of a `packsft pack` or `packsft slurm submit`")
    try:
        return Plan.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise OutputError(f"{path}: unreadable plan ({exc}); pack again with --overwrite") from None


def prepare_plan(out_dir: Path, plan: Plan, overwrite: bool) -> None:
    """Create OUT_DIR for `plan`, or accept it for resuming when it was started with the same identity."""
    if overwrite or not (out_dir / MARKER).exists():
        prepare_output(out_dir, overwrite)  # refuses folders that are not ours, clears ours on overwrite
    elif (out_dir / PLAN_JSON).exists():
        earlier = read_plan(out_dir)
        old, new = earlier.identity(), plan.identity()
        if old != new:
            changed = ", ".join(_differences(old, new))
            raise OutputError(
                f"{out_dir}: already holds a packsft output made differently ({changed}). "
                "Rerun with the same settings to resume it, or pass --overwrite to replace it"
            )
        plan.slurm = plan.slurm or earlier.slurm
        plan.ray = plan.ray or earlier.ray
        if earlier.identity_version < plan.identity_version and earlier.fingerprints != plan.fingerprints \
                and _shard_dirs(out_dir):
            print(f"packsft: {out_dir} was planned by an older packsft, which identified units by file paths and "
                  "mtimes; its units are packed again, identified by content from now on", file=sys.stderr)
        if earlier.to_dict() == plan.to_dict():
            return  # array tasks starting together find the plan `slurm submit` wrote: nothing to write
    elif (out_dir / DATASET_JSON).exists() or any(_shard_dirs(out_dir)):
        raise OutputError(f"{out_dir}: already holds a packsft output. Pass --overwrite to replace it")
    atomic_write_json(out_dir / PLAN_JSON, plan.to_dict())


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    flat_old = {**old["config"], **{k: v for k, v in old.items() if k != "config"}}
    flat_new = {**new["config"], **{k: v for k, v in new.items() if k != "config"}}
    return [f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in sorted(flat_new) if flat_old.get(k) != flat_new.get(k)]


def _shard_dirs(out_dir: Path) -> list[Path]:
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


def resume_hint(out_dir: Path, plan: Plan, missing: list[int]) -> str:
    """The command that packs only the missing units (and how dataset.json then gets written)."""
    if plan.slurm:
        tasks = assign_units(plan.units, plan.slurm["array_size"])
        wanted = [str(t) for t, indices in enumerate(tasks) if set(indices) & set(missing)]
        return (f"sbatch --array={','.join(wanted)} {shlex.quote(plan.slurm['pack_script'])}, then once those "
                f"tasks finish: packsft merge {shlex.quote(str(out_dir))}")
    flags = pack_flags(plan.pack_config(), plan.unit_bytes)
    if plan.ray is not None:
        address = ["--address", plan.ray["address"]] if plan.ray.get("address") else []
        return shlex.join(["packsft", "ray", "submit", *plan.data_inputs, str(out_dir), *address, *flags])
    return shlex.join(["packsft", "pack", *plan.data_inputs, str(out_dir), *flags])


def pack_flags(config: PackConfig, unit_bytes: int) -> list[str]:
    """The `pack` flags that reproduce `config` (only those that differ from the defaults)."""

    defaults, flags = PackConfig(), []
    for f in fields(PackConfig):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name) or value is None or (f.name == "long" and value == DEFAULT_LONG[config.strategy]):
            continue
        if f.name == "encoder":  # the plan holds the encoder auto chose; a rerun chooses again, same bytes
            continue
        flag = "--" + f.name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    if unit_bytes != DEFAULT_UNIT_BYTES:
        flags += ["--unit-mib", f"{unit_bytes / (1 << 20):g}"]
    return flags


def merge(out_dir: str | Path, max_reject_fraction: float | None = None) -> dict[str, Any]:
    """Check every planned unit is complete, then write rejects.jsonl and dataset.json from the manifests.

    An output with no chunks, or with more rejects than `max_reject_fraction` (default: the plan's
    config), is refused (outcome.py) and gets no dataset.json.
    """

    out_dir = Path(out_dir)
    plan = read_plan(out_dir)
    missing = incomplete_units(out_dir, plan)
    if missing:
        names = ", ".join(shard_name(i) for i in missing[:LISTED_UNITS])
        more = f" and {len(missing) - LISTED_UNITS} more" if len(missing) > LISTED_UNITS else ""
        commands = resume_hint(out_dir, plan, missing)
        raise IncompleteOutputError(
            f"{out_dir}: {len(missing)} of {len(plan.units)} units are not complete (units {names}{more}); "
            f"pack them with: {commands}"
        )
    manifests = [m for unit in plan.units if (m := read_manifest(out_dir, unit.index)) is not None]
    if len(manifests) != len(plan.units):
        raise IncompleteOutputError(f"{out_dir}: a shard was removed while merging; run `packsft merge {out_dir}` again")
    _merge_rejects(out_dir, len(plan.units))
    for extra in _shard_dirs(out_dir):  # shards of an earlier plan that had more units
        if not extra.name.isdigit() or int(extra.name) >= len(plan.units):
            shutil.rmtree(extra, ignore_errors=True)
    dataset = build_dataset_manifest(manifests, plan.pack_config(), plan.tokenizer, plan.data_dir,
                                     plan.skipped_files)
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
            lines.append("  missing: " + ", ".join(shard_name(i) for i in self.missing[:LISTED_UNITS])
                         + (f" and {len(self.missing) - LISTED_UNITS} more" if len(self.missing) > LISTED_UNITS else ""))
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
