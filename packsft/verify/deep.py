"""`packsft verify --deep`: re-pack sampled units from their inputs and compare with what is on disk.

    dataset.json: data_dir, config, tokenizer fingerprint
          |  (inputs still there, same size; tokenizer loads with the same fingerprint)
          v
    unit.pack_unit(unit) in memory  -->  tokens, loss_mask, segments, counters
          |                                        ||  byte for byte
          v                                        ||
    shards/NNNNN/*.npy | chunks.parquet, manifest.json counters

Packing is deterministic, so any difference is a fault of the output (or of packsft). A unit whose
inputs are gone or changed, or whose tokenizer changed, cannot be re-packed: that is a note, not a problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from packsft.config import CONFIG_KEYS, PackConfig
from packsft.errors import PacksftError
from packsft.inputs import is_url
from packsft.layout import ARRAY_FILES, MANIFEST_JSON, PARQUET_FILE, SHARDS_DIR
from packsft.reader import open_input
from packsft.records import RejectLedger
from packsft.run.plan import Unit
from packsft.run.unit import pack_unit
from packsft.tokenizer import load_tokenizer
from packsft.verify.files import ShardArrays, compare_arrays
from packsft.writer import narrow_tokens, seq_lengths


def repack_and_compare(
    out_dir: Path, dataset: dict[str, Any], units: list[int], notes: list[str]
) -> tuple[list[tuple[str, str]], int]:
    """(problems as (file relative to OUT_DIR, message), units re-packed); reasons to skip go to notes."""

    skip = "deep check skipped"
    try:
        config = PackConfig(**{k: v for k, v in dataset["config"].items() if k in CONFIG_KEYS})
    except (PacksftError, TypeError) as exc:
        notes.append(f"{skip}: the stored config does not load ({exc})")
        return [], 0
    if config.trust_remote_code:
        notes.append(f"{skip}: the tokenizer needs remote code, which verify never runs")
        return [], 0
    if is_url(dataset.get("data_dir", "")):
        notes.append(f"{skip}: the inputs are remote ({dataset['data_dir']}); --deep re-packs local inputs only")
        return [], 0
    data_dir = Path(dataset.get("data_dir", ""))
    todo = []
    for index in units:
        entry = dataset["shards"][index]
        if len(entry["inputs"]) != 1:
            notes.append(f"{skip} for shard {entry['name']}: it was packed from {len(entry['inputs'])} inputs")
            continue
        source = entry["inputs"][0]
        path = data_dir / source["path"]
        if not path.is_file():
            notes.append(f"{skip} for shard {entry['name']}: input {path} is gone")
        elif path.stat().st_size != source["bytes"]:
            notes.append(f"{skip} for shard {entry['name']}: input {path} changed size since packing")
        else:
            todo.append((index, entry, path))
    if not todo:
        return [], 0
    try:
        tokenizer = load_tokenizer(config.tokenizer, config.template)
    except PacksftError as exc:
        notes.append(f"{skip}: {exc}")
        return [], 0
    if tokenizer.fingerprint != dataset["tokenizer"].get("fingerprint"):
        notes.append(f"{skip}: tokenizer {config.tokenizer!r} changed since packing (fingerprint differs)")
        return [], 0
    problems: list[tuple[str, str]] = []
    identity = json.loads(json.dumps(tokenizer.identity()))
    edited = sorted(k for k in set(identity) | set(dataset["tokenizer"]) if identity.get(k) != dataset["tokenizer"].get(k))
    if edited:  # same fingerprint, so the tokenizer is the same: dataset.json was edited
        problems.append(("dataset.json", f"tokenizer {', '.join(edited)} differ from the tokenizer it names"))

    dtype = np.dtype(dataset["dtype"])
    for index, entry, path in todo:
        shard_dir = f"{SHARDS_DIR}/{entry['name']}"
        try:
            chunks, counters = pack_unit(Unit(index, path, entry["inputs"][0]["path"]), open_input(path, config.format),
                                         config, tokenizer, RejectLedger())
            tokens = narrow_tokens(chunks.tokens, dtype, tokenizer.vocab_size)
        except PacksftError as exc:
            problems.append((shard_dir, f"re-packing {path} failed: {exc}"))
            continue
        fresh = {
            "tokens.npy": tokens,
            "loss_mask.npy": chunks.loss_mask.astype(np.uint8),
            "segment_lengths.npy": chunks.segment_lengths.astype(np.int32),
            "row_segments.npy": chunks.row_segments.astype(np.int64),
        }
        differs = f"differs from a fresh pack of {entry['inputs'][0]['path']}"
        folder = out_dir / shard_dir
        files = entry["files"]
        if all(name in files for name in ARRAY_FILES):
            stored = ShardArrays(*(np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in ARRAY_FILES))
            problems += [(f"{shard_dir}/{name}", text) for name, text in compare_arrays(stored, fresh, _literal(differs))]
        if PARQUET_FILE in files:
            problems += _compare_parquet(folder / PARQUET_FILE, fresh, chunks, f"{shard_dir}/{PARQUET_FILE}", differs)
        manifest = json.loads((folder / MANIFEST_JSON).read_text(encoding="utf-8"))
        recounted = json.loads(json.dumps(counters))
        if recounted != manifest.get("counters"):
            keys = sorted(k for k in set(recounted) | set(manifest.get("counters", {}))
                          if recounted.get(k) != manifest.get("counters", {}).get(k))
            problems.append((f"{shard_dir}/{MANIFEST_JSON}", f"counters {differs} ({', '.join(keys)})"))
    return problems, len(todo)


def _compare_parquet(path: Path, fresh: dict[str, np.ndarray], chunks: Any, name: str, message: str) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq


    table = pq.read_table(path)
    rows, capacity = fresh["tokens.npy"].shape
    stored = {
        "tokens.npy": table.column("input_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        "loss_mask.npy": table.column("loss_mask").combine_chunks().flatten().to_numpy(zero_copy_only=False),
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
