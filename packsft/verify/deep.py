"""`packsft verify --deep`: re-pack sampled units from their inputs and compare with what is on disk.

    dataset.json: data_dir, config, tokenizer fingerprint; shards[i].inputs[0]: file, row groups
          |  (inputs still there, same size; tokenizer loads with the same fingerprint)
          v
    stages.pack_unit(the unit's row groups, the pack's config)  -->  tokens, loss_mask, segments, counters
          |                                        ||  byte for byte
          v                                        ||
    shards/NNNNN/*.npy | chunks.parquet, manifest.json counters

Packing is deterministic, so any difference is a fault of the output (or of packsft). A unit whose
inputs are gone or changed, or whose tokenizer changed, cannot be re-packed: it is returned as skipped, with
why, and `checks.py` makes that a problem unless the caller accepts skips (`--allow-skip`).

A pack stores data_dir and a local tokenizer as absolute paths. Outputs of an earlier packsft stored them as given:
a relative one is relative to the working directory of the pack, so deep looks for it (`pack_folders`) from the
pack's working directory (derived from plan.json, whose inputs are absolute), then from OUT_DIR and each folder
above it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from packsft.config import CONFIG_KEYS, PackConfig
from packsft.errors import PacksftError
from packsft.pack.rows import Chunks
from packsft.read.inputs import is_url
from packsft.read.records import RejectLedger
from packsft.render.chat.proof import output_identity
from packsft.render.tokenizer import PackTokenizer, load_output_tokenizer
from packsft.run.outdir import read_plan
from packsft.run.plan import Unit
from packsft.stages import open_unit, pack_unit
from packsft.verify.files import StoredArrays, compare_arrays
from packsft.write.layout import (
    ARRAY_FILES,
    DATASET_JSON,
    LOSS_MASK_NPY,
    MANIFEST_JSON,
    PARQUET_FILE,
    SHARDS_DIR,
    TOKENS_NPY,
)
from packsft.write.writer import narrow_tokens, seq_lengths, stored_arrays

SKIP = "deep check skipped"
Problems = list[tuple[str, str]]  # (file relative to OUT_DIR, message)


@dataclass
class DeepResult:
    """What --deep found: problems, the units it re-packed, and what it could not re-pack (file, why)."""

    problems: Problems = field(default_factory=list)
    skipped: Problems = field(default_factory=list)
    repacked: int = 0


def repack_and_compare(out_dir: Path, dataset: dict[str, Any], units: list[int]) -> DeepResult:
    """Re-pack the shards at indices `units` and compare; a unit it cannot re-pack is `skipped`, with why."""
    result = DeepResult()
    folders = pack_folders(out_dir, dataset)
    config = _stored_config(dataset, result.skipped)
    todo = _repackable_units(dataset, units, folders, result.skipped) if config is not None else []
    tokenizer = _packing_tokenizer(config, dataset, folders, result.skipped) if config is not None and todo else None
    if config is None or tokenizer is None:
        return result
    result.problems = _edited_tokenizer_identity(tokenizer, dataset)
    for unit in todo:
        result.problems += _compare_unit(out_dir, dataset, unit, config, tokenizer)
    result.repacked = len(todo)
    return result


def pack_folders(out_dir: Path, dataset: dict[str, Any]) -> list[Path]:
    """Where a relative path the pack stored may be relative to, most likely first: the pack's working directory
    (where plan.json's absolute inputs say it was), then OUT_DIR and each folder above it."""
    out = Path(os.path.abspath(out_dir))
    folders = [out, *out.parents]
    try:
        arguments = read_plan(out).data_inputs
    except PacksftError:
        return folders
    data_dir = str(dataset.get("data_dir", ""))
    if len(arguments) != 1 or is_url(data_dir) or Path(data_dir).is_absolute() or not Path(arguments[0]).is_absolute():
        return folders
    # The one DATA argument, made absolute at packing, lies in (or is) the data_dir it was given as.
    argument = Path(os.path.normpath(arguments[0]))
    for folder in [argument, *argument.parents]:
        root = Path(os.path.normpath(folder / data_dir))
        if root == argument or root in argument.parents:
            return [folder, *folders]
    return folders


def resolve_stored(path: str, folders: list[Path]) -> str:
    """A stored path as found from here: as stored when absolute, remote or there from the working directory,
    else under the first of `folders` that holds it; as stored where none does (the caller names it gone)."""
    if is_url(path) or Path(path).is_absolute() or Path(path).exists():
        return path
    return next((str(folder / path) for folder in folders if (folder / path).exists()), path)


def _stored_config(dataset: dict[str, Any], skipped: Problems) -> PackConfig | None:
    try:
        config = PackConfig(**{k: v for k, v in dataset["config"].items() if k in CONFIG_KEYS})
    except (PacksftError, TypeError) as exc:
        skipped.append((DATASET_JSON, f"{SKIP}: the stored config does not load ({exc})"))
        return None
    if config.trust_remote_code:
        skipped.append((DATASET_JSON, f"{SKIP}: the tokenizer needs remote code, which verify never runs"))
        return None
    return config


def _repackable_units(dataset: dict[str, Any], indices: list[int], folders: list[Path],
                      skipped: Problems) -> list[Unit]:
    """The units of the shards at `indices` whose input is still there, unchanged in size.

    A unit is rebuilt from its manifest's input record (row-group range included): a big file is cut
    into several units, and each must be re-packed from its own rows only.
    """
    stored = str(dataset.get("data_dir", ""))
    if is_url(stored):
        skipped.append((DATASET_JSON, f"{SKIP}: the inputs are remote ({stored}); --deep re-packs local inputs only"))
        return []
    data_dir = Path(resolve_stored(stored, folders))
    units = []
    for index in indices:
        entry = dataset["shards"][index]
        shard = f"{SHARDS_DIR}/{entry['name']}"
        if not entry["inputs"]:
            skipped.append((shard, f"{SKIP} for shard {entry['name']}: its manifest names no input"))
            continue
        unit = Unit.from_manifest_inputs(index, data_dir, entry["inputs"])  # several under --group-files
        changed = _changed_input(unit)
        if changed:
            skipped.append((shard, f"{SKIP} for shard {entry['name']}: {changed}"))
        else:
            units.append(unit)
    return units


def _changed_input(unit: Unit) -> str | None:
    """Why the unit's files cannot be re-packed as they were (gone, or another size), or None."""
    for part in unit.parts:
        path = Path(part.path)  # local: remote inputs were noted above
        if not path.is_file():
            return f"input {path} is gone"
        if path.stat().st_size != part.file_bytes:
            return f"input {path} changed size since packing"
    return None


def _packing_tokenizer(config: PackConfig, dataset: dict[str, Any], folders: list[Path],
                       skipped: Problems) -> PackTokenizer | None:
    """The tokenizer the output names, if it still loads with the fingerprint the output records."""
    name = resolve_stored(config.tokenizer, folders)
    try:
        tokenizer = load_output_tokenizer(dataset["tokenizer"], name)
    except PacksftError as exc:
        skipped.append((DATASET_JSON, f"{SKIP}: {exc}"))
        return None
    if tokenizer.fingerprint != dataset["tokenizer"].get("fingerprint"):
        skipped.append((DATASET_JSON, f"{SKIP}: tokenizer {config.tokenizer!r} changed since packing (fingerprint differs)"))
        return None
    # The reference path, whatever the pack used: the HF encoding, and for chat templates apply_chat_template.
    return replace(tokenizer, chat_renderer="hf")


def _edited_tokenizer_identity(tokenizer: PackTokenizer, dataset: dict[str, Any]) -> Problems:
    """Same fingerprint, so the same tokenizer: any other difference means dataset.json was edited. Its name is
    where it was loaded from, found again from here (`resolve_stored`): no part of what it is."""
    identity = json.loads(json.dumps(output_identity(tokenizer)))
    stored = dataset["tokenizer"]
    edited = sorted(k for k in set(identity) | set(stored) if k != "name" and identity.get(k) != stored.get(k))
    return [(DATASET_JSON, f"tokenizer {', '.join(edited)} differ from the tokenizer it names")] if edited else []


def _compare_unit(out_dir: Path, dataset: dict[str, Any], unit: Unit, config: PackConfig,
                  tokenizer: PackTokenizer) -> Problems:
    """Re-pack one unit in memory and compare its arrays, parquet and counters with its shard."""
    entry = dataset["shards"][unit.index]
    shard_dir = f"{SHARDS_DIR}/{entry['name']}"
    try:
        chunks, counters = pack_unit(unit.parts, open_unit(unit.parts, config), config, tokenizer, RejectLedger())
        fresh = stored_arrays(chunks, narrow_tokens(chunks.tokens, np.dtype(dataset["dtype"]), tokenizer.vocab_size))
    except PacksftError as exc:
        return [(shard_dir, f"re-packing {unit.label} failed: {exc}")]
    differs = f"differs from a fresh pack of {unit.label}"
    folder = out_dir / shard_dir
    problems: Problems = []
    if all(name in entry["files"] for name in ARRAY_FILES):
        stored = StoredArrays(*(np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in ARRAY_FILES))
        problems += [(f"{shard_dir}/{name}", text) for name, text in compare_arrays(stored, fresh, _literal(differs))]
    if PARQUET_FILE in entry["files"]:
        problems += _compare_parquet(folder / PARQUET_FILE, fresh, chunks, f"{shard_dir}/{PARQUET_FILE}", differs)
    manifest = json.loads((folder / MANIFEST_JSON).read_text(encoding="utf-8"))
    stored_counters, recounted = manifest.get("counters", {}), counters.to_dict()
    if recounted != stored_counters:
        keys = sorted(k for k in set(recounted) | set(stored_counters) if recounted.get(k) != stored_counters.get(k))
        problems.append((f"{shard_dir}/{MANIFEST_JSON}", f"counters differ from a fresh pack of {unit.label} ({', '.join(keys)})"))
    return problems


def _compare_parquet(path: Path, fresh: dict[str, np.ndarray], chunks: Chunks, name: str, message: str) -> Problems:
    table = pq.read_table(path)
    rows, capacity = fresh[TOKENS_NPY].shape
    stored = {
        TOKENS_NPY: table.column("input_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        LOSS_MASK_NPY: table.column("loss_mask").combine_chunks().flatten().to_numpy(zero_copy_only=False),
    }
    want = {key: fresh[key].reshape(-1) for key in stored}
    problems = [(name, f"{column.removesuffix('.npy')} {message}") for column in stored
                if stored[column].dtype != want[column].dtype or not np.array_equal(stored[column], want[column])]
    if not table.column("seq_lengths").combine_chunks().equals(seq_lengths(chunks, capacity)):
        problems.append((name, f"seq_lengths {message}"))
    return problems


def _literal(text: str) -> str:
    """`text` as a str.format pattern that yields text itself (paths may hold braces)."""
    return text.replace("{", "{{").replace("}", "}}")
