"""The work plan: a deterministic list of units (file row-group ranges), and which shard does which.

    DATA_DIR (sorted *.parquet)        units, unit_bytes = 150 MiB    array tasks (--num-shards 2)
    a.parquet  300 MiB, 6 groups  ->   00000 a.parquet groups [0, 3)  -> task 0: 00000, 00003
                                       00001 a.parquet groups [3, 6)  -> task 1: 00001, 00002
    b.parquet   40 MiB, 1 group   ->   00002 b.parquet groups [0, 1)
    c.parquet  100 MiB, 2 groups  ->   00003 c.parquet groups [0, 2)

A file becomes ceil(bytes / unit_bytes) units of contiguous row groups with about equal compressed
bytes (a row group is never split: it is parquet's unit of reading). The plan depends only on the
input files and `unit_bytes`, never on how many workers or array tasks run it, so every way of
running it writes the same shards. Each unit carries a fingerprint of everything that decides its
bytes (tokenizer, resolved config, file size and mtime, row-group range): a shard whose manifest
holds the same fingerprint is complete and is never packed again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from packsft.config import PackConfig, bytes_config
from packsft.errors import InputError
from packsft.read.inputs import InputListing, Location, as_location, content_sha256, file_info, list_inputs
from packsft.read.reader import InputFile, open_input
from packsft.read.records import parse_role_map
from packsft.render.tokenizer_cache import cache_key, read_entry, write_entry
from packsft.write.layout import FORMAT_VERSION

# Compressed parquet bytes per unit. A unit is packed in memory (best-fit sees all of it), so this
# bounds a worker's memory: measured on ShareGPT with GPT-2, 1 MiB of parquet is ~1M tokens and a
# worker peaks at ~0.1 GiB + ~50 bytes per token of its unit (BENCHMARKS.md: 327 MiB for a unit of
# 3.7M tokens), so 8 MiB stays under 1 GiB. Best-fit
# over ~8M tokens (~4k rows of 2048) loses nothing measurable against larger units.
DEFAULT_UNIT_BYTES = 8 << 20
PLAN_JSON = "plan.json"
PLAN_VERSION = 1


@dataclass(frozen=True)
class Unit:
    """One unit of work: a range of row groups of one input file (or, under --group-files, several whole
    small files: this one and `more`), and the shard it becomes."""

    index: int
    path: Location  # a local Path, or the URL of a remote file
    name: str  # the path relative to the inputs' root (data_dir), as recorded in manifests
    row_groups: tuple[int, int] | None = None  # [start, stop); None = the whole file
    first_row: int = 0  # row number (in the file) of the unit's first row
    rows: int = 0
    bytes: int = 0  # compressed bytes of the unit's row groups (with `more`: of all its files)
    file_bytes: int = 0
    file_mtime_ns: int = 0
    input_format: str = ""  # the format read (auto-detected unless --input-format named it)
    detected: str = ""  # what auto detected it from, e.g. "'conversations' key"; "" when not auto
    json_text: bool = False  # conversations stored as JSON text, decoded per record
    # sha256 of the bytes the unit reads (inputs.content_sha256; "" in plans of older packsft, and for URLs,
    # which size and mtime identify: hashing would download them)
    content: str = ""
    more: tuple[Unit, ...] = ()  # further whole files packed into the same shard, in name order

    @property
    def parts(self) -> tuple[Unit, ...]:
        """The files the unit reads, in order: itself, then `more`."""
        return (self, *self.more)

    @property
    def total_rows(self) -> int:
        """Rows of all its files (parquet; JSON Lines files count 0 until read)."""
        return sum(part.rows for part in self.parts)

    @property
    def label(self) -> str:
        """How messages name the unit: its file, and how many more it holds."""
        count = len(self.more)
        return f"{self.name} (+{count} file{'s' * (count != 1)})" if count else self.name

    def to_dict(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "more"}
        record["path"] = str(self.path)
        record["row_groups"] = list(self.row_groups) if self.row_groups is not None else None
        if self.more:  # plans without grouped files read as they always did
            record["more"] = [part.to_dict() for part in self.more]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Unit:
        groups = record.get("row_groups")
        more = tuple(cls.from_dict(part) for part in record.get("more", ()))
        return cls(**{**record, "path": as_location(record["path"]), "more": more,
                      "row_groups": tuple(groups) if groups is not None else None})

    def manifest_input(self) -> dict[str, Any]:
        """What a shard manifest records of this file (an entry of `inputs`)."""
        return {"path": self.name, "bytes": self.file_bytes, "row_groups": list(self.row_groups or ()),
                "first_row": self.first_row}

    @classmethod
    def from_manifest_inputs(cls, index: int, data_dir: Path, records: list[dict[str, Any]]) -> Unit:
        """The unit a shard was packed from, rebuilt from its manifest's `inputs` (for `verify --deep`)."""
        first, *more = (cls.from_manifest_input(index, data_dir, record) for record in records)
        return replace(first, more=tuple(more))

    @classmethod
    def from_manifest_input(cls, index: int, data_dir: Path, record: dict[str, Any]) -> Unit:
        """The unit a shard was packed from, rebuilt from its manifest's `inputs[0]` (for `verify --deep`)."""
        groups = record.get("row_groups") or None  # [] records a whole file
        return cls(index=index, path=data_dir / record["path"], name=record["path"],
                   row_groups=(int(groups[0]), int(groups[1])) if groups else None,
                   first_row=record.get("first_row", 0), rows=record.get("rows", 0), file_bytes=record["bytes"])


def split_row_groups(sizes: list[int], parts: int) -> list[tuple[int, int]]:
    """Cut row groups (by their byte sizes) into `parts` contiguous ranges of about equal bytes.

    Each cut goes to the group boundary nearest its ideal byte offset (k * total / parts), keeping
    at least one group per range. O(groups x parts).
    """
    parts = max(1, min(parts, len(sizes)))
    before = [0]  # before[b] = bytes of groups [0, b)
    for size in sizes:
        before.append(before[-1] + size)
    cuts = [0]
    for k in range(1, parts):
        ideal = before[-1] * k / parts
        candidates = range(cuts[-1] + 1, len(sizes) - (parts - k) + 1)
        cuts.append(min(candidates, key=lambda b: (abs(before[b] - ideal), b)))
    cuts.append(len(sizes))
    return list(zip(cuts[:-1], cuts[1:]))


def plan_units(data: str | Path | list[str], config: PackConfig | None = None,
               unit_bytes: int = DEFAULT_UNIT_BYTES) -> list[Unit]:
    """The units of DATA (see plan_inputs); a bad input file raises InputError."""
    return plan_inputs(data, config, unit_bytes)[0]


def plan_inputs(
    data: str | Path | list[str] | InputListing,
    config: PackConfig | None = None,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    *,
    skip_bad_files: bool = False,
) -> tuple[list[Unit], list[dict[str, str]]]:
    """The units of DATA (folders, globs, files or URLs; see inputs.py): files sorted by name, parquet
    ones cut into row-group ranges of about unit_bytes (a JSON Lines file is one unit: it has no row
    groups). Also returns the files skipped as unreadable (only with skip_bad_files; otherwise a bad
    file raises). Each file is opened once, so planning is linear in the number of files."""
    config = config or PackConfig()
    aliases = parse_role_map(config.role_map)
    listing = data if isinstance(data, InputListing) else list_inputs(data)
    units: list[Unit] = []
    skipped: list[dict[str, str]] = []
    for name, path in listing.files:
        try:
            source = open_input(path, config.format, config.input_format, aliases)
        except InputError as exc:
            if not skip_bad_files:
                raise
            skipped.append({"path": name, "error": str(exc)})
            continue
        units += _file_units(path, name, source, unit_bytes, first_index=len(units))
    return (group_small_files(units, unit_bytes) if config.group_files else units), skipped


def _file_units(path: Location, name: str, source: InputFile, unit_bytes: int, first_index: int) -> list[Unit]:
    """The units of one input file: row-group ranges of about unit_bytes, or the whole file (JSON Lines)."""
    size, mtime_ns = file_info(path)
    whole = Unit(index=first_index, path=path, name=name, bytes=size, file_bytes=size, file_mtime_ns=mtime_ns,
                 input_format=source.input_format, detected=source.detected or "", json_text=source.json_text)
    if source.parquet is None:
        return [replace(whole, content=input_digest(whole))]
    metadata = source.parquet.metadata
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    sizes = [sum(g.column(c).total_compressed_size for c in range(g.num_columns)) for g in groups]
    rows = [g.num_rows for g in groups]
    parts = max(1, math.ceil(sum(sizes) / unit_bytes))
    ranges = split_row_groups(sizes, parts) if groups else [(0, 0)]
    units = [replace(whole, index=first_index + k, row_groups=(start, stop), first_row=sum(rows[:start]),
                     rows=sum(rows[start:stop]), bytes=sum(sizes[start:stop]))
             for k, (start, stop) in enumerate(ranges)]
    return [replace(unit, content=input_digest(unit)) for unit in units]


def input_digest(unit: Unit) -> str:
    """`Unit.content` of a local unit: its bytes' sha256, cached by path, size, mtime and row groups (a rerun
    reads the cache, not the data); "" for a URL."""
    if not isinstance(unit.path, Path):
        return ""
    facts = {"path": str(unit.path.resolve()), "bytes": unit.file_bytes, "mtime_ns": unit.file_mtime_ns,
             "row_groups": list(unit.row_groups) if unit.row_groups is not None else None}
    key = cache_key("input-content", facts)
    entry = read_entry("inputs", key)
    if entry is not None and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = content_sha256(unit.path, unit.row_groups)
    write_entry("inputs", key, {"sha256": digest})
    return digest


# 2: units are identified by content (input bytes, tokenizer files), not by paths and mtimes (1).
IDENTITY_VERSION = 2


def fingerprint_config(config: PackConfig) -> dict[str, Any]:
    return bytes_config(config.to_dict())


def unit_fingerprint(unit: Unit, config: PackConfig, tokenizer_fingerprint: str) -> str:
    """sha256 of everything that decides a unit's shard bytes."""
    payload = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint,
        "config": fingerprint_config(config),
        "input": _fingerprint_input(unit),
    }
    if unit.more:  # only grouped units have this key: the fingerprints of other units stay as they were
        payload["more"] = [_fingerprint_input(part) for part in unit.more]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _fingerprint_input(unit: Unit) -> list[Any]:
    """The unit's name (it is written into rejects), what it reads, and its row groups. A URL, or a unit of a plan
    written before content identity, is identified by its size and mtime."""
    identity = unit.content if unit.content else [unit.file_bytes, unit.file_mtime_ns]
    return [unit.name, identity, unit.row_groups and list(unit.row_groups)]


def group_small_files(units: list[Unit], unit_bytes: int) -> list[Unit]:
    """Units of consecutive whole files packed together up to about `unit_bytes` (`--group-files`).

    Each small file alone is a unit whose best-fit sees only its own conversations, and whose last row
    is mostly padding: 110 files of 20 ShareGPT conversations pack at 90.2% fill, one file of them at 97.8%.
    A file cut into row-group ranges (bigger than a unit) is never grouped.
    """
    def small(unit: Unit) -> bool:  # a whole file of at most a unit (never cut into row-group ranges)
        return unit.file_bytes <= unit_bytes and unit.first_row == 0

    grouped: list[Unit] = []
    for unit in units:
        last = grouped[-1] if grouped else None
        if last is not None and small(unit) and small(last) and last.bytes + unit.bytes <= unit_bytes:
            grouped[-1] = replace(last, more=(*last.more, replace(unit, index=last.index)),
                                  bytes=last.bytes + unit.bytes)
        else:
            grouped.append(replace(unit, index=len(grouped)))
    return grouped


def assign_units(units: list[Unit], num_shards: int) -> list[list[int]]:
    """Unit indices per array task: largest unit first onto the least-loaded task (deterministic)."""
    loads = [(0, task) for task in range(num_shards)]
    tasks: list[list[int]] = [[] for _ in range(num_shards)]
    for unit in sorted(units, key=lambda u: (-u.bytes, u.index)):
        load, task = min(loads)
        loads[task] = (load + unit.bytes, task)
        tasks[task].append(unit.index)
    return [sorted(indices) for indices in tasks]


def available_cpus() -> int:
    """CPUs this process may use: SLURM's allocation when inside a job, else the affinity mask."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, math.floor(available_cpus() / workers))
