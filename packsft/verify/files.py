"""File-level checks of `packsft verify`: shard list, manifests, sizes, sha256, .npy headers, parquet.

    dataset.json  shards[i] = {name, rows, inputs, files: {name: {shape, dtype, bytes, sha256}}}
                        ||  must agree field by field
    shards/NNNNN/manifest.json = {shard, rows, inputs, files, dtype, config, tokenizer_fingerprint, ...}
                        ||  must describe the bytes on disk
    shards/NNNNN/*.npy  opened with allow_pickle=False: an object array is refused, never unpickled

Problems are (file, message) pairs; checks.py turns them into `Problem`s with the shard folder prefixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from packsft.config import bytes_config
from packsft.write.layout import (
    ARRAY_FILES,
    LOSS_MASK_NPY,
    MANIFEST_JSON,
    PARQUET_FILE,
    SHARD_FILES,
    SHARDS_DIR,
    TOKENS_NPY,
    array_contract,
    contract_problems,
    read_npy_header,
    sha256_file,
    shard_name,
)

MANIFEST_FIELDS = ("rows", "inputs", "files", "fingerprint")  # fields a manifest shares with its dataset.json entry


@dataclass
class StoredArrays:
    """A shard's arrays as verify read them (memory maps, or decoded from parquet: segments None)."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    segment_lengths: np.ndarray | None
    row_segments: np.ndarray | None


def check_shard_list(out_dir: Path, dataset: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[str, str]]]:
    """The listed shards whose folders exist, and problems: malformed or missing entries, unlisted folders."""
    present, problems, names = [], [], set()
    for index, entry in enumerate(dataset["shards"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and type(entry.get("rows")) is int
                and entry["rows"] >= 0 and isinstance(entry.get("inputs"), list) and isinstance(entry.get("files"), dict)):
            problems.append(("dataset.json", f"shards[{index}] is not a shard entry (name, rows, inputs, files)"))
            continue
        names.add(entry["name"])
        if not (out_dir / SHARDS_DIR / str(entry["name"])).is_dir():
            problems.append((f"{SHARDS_DIR}/{entry['name']}", "missing shard: listed in dataset.json, not on disk"))
        else:
            present.append((index, entry))
    folder = out_dir / SHARDS_DIR
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and not path.name.startswith(".") and path.name not in names:
            problems.append((f"{SHARDS_DIR}/{path.name}", "shard folder not listed in dataset.json"))
    return present, problems


def check_shard_files(
    out_dir: Path, dataset: dict[str, Any], entry: dict[str, Any]
) -> tuple[dict[str, Any] | None, StoredArrays | None, list[tuple[str, str]], int]:
    """(manifest, arrays or None if any is unusable, problems, files whose bytes match) of one shard."""
    folder = out_dir / SHARDS_DIR / entry["name"]
    problems: list[tuple[str, str]] = []
    manifest = _read_manifest(folder, problems)
    if manifest is not None:
        for key in MANIFEST_FIELDS:
            if manifest.get(key) != entry.get(key):
                problems.append((MANIFEST_JSON, f"{key} disagrees with dataset.json{_first_difference(manifest.get(key), entry.get(key))}"))
        unit = manifest.get("unit")
        if type(unit) is not int or shard_name(unit) != entry["name"]:
            problems.append((MANIFEST_JSON, f"unit is {_short(unit)}, the shard is {entry['name']}"))
        expected = {"shard": entry["name"], "dtype": dataset["dtype"], "config": dataset["config"],
                    "tokenizer_fingerprint": dataset["tokenizer"].get("fingerprint")}
        for key, value in expected.items():
            found = manifest.get(key)
            if key == "config" and isinstance(found, dict) and isinstance(value, dict):
                found, value = bytes_config(found), bytes_config(value)  # a resumed run may change those keys
            if found != value:
                problems.append((MANIFEST_JSON, f"{key} is {_short(found)}, dataset.json says {_short(value)}"))
    wanted = SHARD_FILES.get(dataset["config"].get("output_format", "npy"), ARRAY_FILES)
    listed = entry["files"] if isinstance(entry["files"], dict) else {}
    for name in sorted(set(wanted) - set(listed)):
        problems.append((name, "not listed in dataset.json (the output format writes it)"))
    for name in sorted(set(listed) - set(wanted)):
        problems.append((name, "listed in dataset.json but the output format does not write it"))
    # Only files whose bytes match are opened: the row checks then judge what was written, and a
    # damaged header cannot pile follow-up errors onto the one that matters.
    intact = {name for name in sorted(set(wanted) & set(listed)) if _check_bytes(folder / name, listed[name], problems)}
    rows, seq_length = entry["rows"], dataset["seq_length"]
    shapes = array_contract(rows, seq_length, np.dtype(dataset["dtype"]))
    arrays = {}
    for name in [n for n in ARRAY_FILES if n in intact]:
        array = _open_npy(folder / name, listed[name], shapes[name], problems)
        if array is not None:
            arrays[name] = array
    loaded: StoredArrays | None
    if len(arrays) == len(ARRAY_FILES):
        loaded = StoredArrays(*(arrays[name] for name in ARRAY_FILES))
    elif PARQUET_FILE in intact and not set(ARRAY_FILES) & set(wanted):
        loaded = _read_parquet(folder / PARQUET_FILE, rows, seq_length + 1, problems)
    else:
        loaded = None
    if loaded is not None and arrays and PARQUET_FILE in intact:
        from_parquet = _read_parquet(folder / PARQUET_FILE, rows, seq_length + 1, problems)
        if from_parquet is not None:
            differ = compare_arrays(from_parquet, {TOKENS_NPY: loaded.tokens, LOSS_MASK_NPY: loaded.loss_mask},
                                    "differs from {name}")
            problems += [(PARQUET_FILE, text) for _, text in differ]
    return manifest, loaded, problems, len(intact)


def _read_manifest(folder: Path, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    path = folder / MANIFEST_JSON
    if not path.exists():
        problems.append((MANIFEST_JSON, "missing"))
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append((MANIFEST_JSON, f"not valid JSON ({exc})"))
        return None
    if not isinstance(manifest, dict):
        problems.append((MANIFEST_JSON, "not a JSON object"))
        return None
    return manifest


def _check_bytes(path: Path, meta: Any, problems: list[tuple[str, str]]) -> bool:
    if not path.is_file():
        problems.append((path.name, "missing"))
        return False
    if not isinstance(meta, dict):
        problems.append((path.name, "dataset.json holds no metadata for it"))
        return False
    size = path.stat().st_size
    if size != meta.get("bytes"):
        problems.append((path.name, f"is {size:,} bytes, the manifest says {meta.get('bytes')!r} (truncated or extended)"))
        return False
    if sha256_file(path) != meta.get("sha256"):
        problems.append((path.name, "sha256 differs from the manifest: the file changed after packing"))
        return False
    return True


def _open_npy(path: Path, meta: dict[str, Any], contract: tuple[tuple[int, ...] | None, np.dtype],
              problems: list[tuple[str, str]]) -> np.ndarray | None:
    """Memory-map one array if its header keeps the contract and agrees with the manifest."""
    try:
        header = read_npy_header(path)
    except ValueError as exc:
        problems.append((path.name, f"not a readable .npy array ({exc})"))
        return None
    found = contract_problems(header, *contract)
    if not header.dtype.hasobject and (list(header.shape) != meta.get("shape") or str(header.dtype) != meta.get("dtype")):
        found.insert(0, f"holds {header.dtype} {list(header.shape)}, the manifest says {meta.get('dtype')} {meta.get('shape')}")
    problems += [(path.name, message) for message in found]
    if found:
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # e.g. fewer data bytes than the header promises
        problems.append((path.name, f"not a readable .npy array ({str(exc).splitlines()[0]})"))
        return None


def _read_parquet(path: Path, rows: int, capacity: int, problems: list[tuple[str, str]]) -> StoredArrays | None:
    """tokens and loss_mask from chunks.parquet; row widths and seq_lengths sums checked."""
    try:
        table = pq.read_table(path)
        columns = {name: table.column(name).combine_chunks() for name in ("input_ids", "loss_mask", "seq_lengths")}
    except (pa.ArrowException, OSError, KeyError) as exc:
        problems.append((PARQUET_FILE, f"not readable as chunks ({str(exc).splitlines()[0]})"))
        return None
    if table.num_rows != rows:
        problems.append((PARQUET_FILE, f"holds {table.num_rows} rows, the manifest says {rows}"))
        return None
    matrices = []
    for name, width in (("input_ids", capacity), ("loss_mask", capacity - 1)):
        widths = np.diff(columns[name].offsets.to_numpy())
        if np.any(widths != width):
            problems.append((PARQUET_FILE, f"{name} rows are not all {width} long"))
            return None
        matrices.append(columns[name].flatten().to_numpy().reshape(rows, width))
    seq = columns["seq_lengths"]
    sums = np.add.reduceat(seq.flatten().to_numpy().astype(np.int64), seq.offsets.to_numpy()[:-1]) if rows else np.zeros(0)
    if np.any(np.diff(seq.offsets.to_numpy()) == 0) or np.any(sums != capacity) or np.any(seq.flatten().to_numpy() < 1):
        problems.append((PARQUET_FILE, f"seq_lengths do not split every row into lengths >= 1 summing to {capacity}"))
    return StoredArrays(matrices[0], matrices[1], None, None)


def compare_arrays(found: StoredArrays, expected: dict[str, np.ndarray], message: str) -> list[tuple[str, str]]:
    """Byte-for-byte comparison: dtype, shape and values; names the first differing row.

    `message` may name the array as `{name}`.
    """
    problems = []
    for name, want in expected.items():
        have = getattr(found, name.removesuffix(".npy"))
        if have is None:
            continue
        have = np.asarray(have)
        if have.dtype != want.dtype or have.shape != want.shape:
            problems.append((name, f"{message.format(name=name)}: {have.dtype} {list(have.shape)} vs {want.dtype} {list(want.shape)}"))
        elif not np.array_equal(have, want):
            differs = (have != want).reshape(len(have), -1).any(axis=1) if have.ndim else np.array([True])
            problems.append((name, f"{message.format(name=name)} (first at {'row' if have.ndim > 1 else 'index'} "
                                   f"{int(np.flatnonzero(differs)[0])})"))
    return problems


def _first_difference(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f" ({', '.join(keys)})" if keys else ""
    return ""


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
