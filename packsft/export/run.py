"""Run an export: check DEST, stream the shards through one target, write the manifest last.

    DEST/
      .packsft-export   marker: this folder holds a packsft export (an --overwrite may clear it)
      ...               the target's files, one group per source shard
      export.json       written last: source fingerprint, target and matched library version,
                        how to load the files, and every file with its size and sha256

Memory is bounded by one shard: each target turns a shard's arrays into its files and lets go.
Equal inputs give equal bytes (no timestamps anywhere; paths in export.json are relative to DEST).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from packsft.errors import ConfigError, OutputError
from packsft.export import hf, megatron, olmo_core, trl
from packsft.export.shards import read_shards
from packsft.export.target import Source, Target
from packsft.loader.gather import open_shards, output_fingerprint
from packsft.version import __version__
from packsft.write.layout import PackedOutput, Topology, sha256_file
from packsft.write.writer import atomic_write_json

TARGETS: dict[str, Target] = {target.name: target for target in (trl.TARGET, megatron.TARGET, olmo_core.TARGET, hf.TARGET)}
EXPORT_JSON = "export.json"
EXPORT_MARKER = ".packsft-export"


@dataclass(frozen=True)
class ExportResult:
    dest: Path
    target: str
    rows: int
    files: int
    bytes: int
    seconds: float


def prepare_dest(dest: Path, out_dir: Path, overwrite: bool) -> None:
    """Create DEST, or clear an earlier export in it; never touch a folder that is not one."""
    if dest.resolve() == out_dir.resolve() or out_dir.resolve() in dest.resolve().parents:
        raise ConfigError(f"{dest}: inside the packed output {out_dir}; export to a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest}: exists and is not a folder. Pick another DEST")
    if dest.exists() and any(dest.iterdir()):
        if not (dest / EXPORT_MARKER).exists():
            raise OutputError(f"{dest}: not empty and not a packsft export; packsft never writes into or deletes "
                              "other folders. Pick an empty or new DEST")
        if not overwrite:
            raise OutputError(f"{dest}: already holds a packsft export. Pass --overwrite to replace it")
        for child in dest.iterdir():  # rmtree never follows symlinks; a symlink child is unlinked
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / EXPORT_MARKER).touch()
    except OSError as exc:
        raise OutputError(f"{dest}: cannot create ({exc.strerror or exc}); check the path and permissions") from None


def installed_version(library: str) -> str | None:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


def manifest(output: PackedOutput, target: Target, source: Source, dest: Path, files: list[Path]) -> dict[str, Any]:
    dataset = output.dataset
    return {
        "packsft_version": __version__,
        "target": target.name,
        "library": target.library,
        "matched_version": target.matched_version,
        "installed_version": installed_version(target.library),
        "source": {
            "out_dir": str(output.out_dir.resolve()),
            "fingerprint": output_fingerprint(dataset),
            "rows": len(output),
            "seq_length": source.seq_length,
            "dtype": source.dtype,
            "tokenizer": {key: dataset["tokenizer"].get(key) for key in ("name", "fingerprint", "vocab_size", "special_ids")},
        },
        "loading": target.loading(Path("."), source),
        "files": [{"path": str(path.relative_to(dest)), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
                  for path in files],
    }


def export_output(out_dir: str | Path, dest: str | Path, to: str, *, overwrite: bool = False,
                  quiet: bool = True) -> ExportResult:
    """Write a packed output in a trainer's format (`to` is a key of TARGETS) into DEST.

    Reads the stored arrays only (never the input data or the tokenizer), one shard at a time.
    """
    if to not in TARGETS:
        raise ConfigError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    started, target = time.perf_counter(), TARGETS[to]
    output, dest = PackedOutput(out_dir), Path(dest)
    open_shards(output)  # checks the shapes, dtypes and sizes of every array, before anything is written
    prepare_dest(dest, output.out_dir, overwrite)
    dataset = output.dataset
    source = Source(dataset["seq_length"], dataset["tokenizer"].get("vocab_size", 0), dataset["dtype"],
                    dict(dataset["tokenizer"].get("special_ids", {})), tuple(output.shards), Topology.of(dataset))
    files: list[Path] = []
    shards = tqdm(read_shards(output), total=len(output.shards), desc=f"export {to}", unit="shard", disable=quiet)
    for shard in shards:
        files += target.write_shard(shard, dest, source)
    payload = manifest(output, target, source, dest, files)
    atomic_write_json(dest / EXPORT_JSON, payload)
    return ExportResult(dest, to, len(output), len(files), sum(f["bytes"] for f in payload["files"]),
                        time.perf_counter() - started)
