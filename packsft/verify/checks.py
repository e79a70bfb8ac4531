"""`packsft verify OUT_DIR [--deep]`: check a packed output before it feeds weeks of GPU time.

    dataset.json        complete and parsable; format version; rows, tokens, counters (= the sum of the
                        shard manifests) and stats (= summarize(counters)) agree with each other
    shards/NNNNN/       every listed shard exists, none unlisted; manifest.json agrees with dataset.json
      manifest.json     (rows, inputs, file metadata, config, tokenizer fingerprint)
      *.npy, *.parquet  bytes and sha256 as recorded (catches any flipped byte), then the .npy header:
                        shape and dtype as recorded and as the contract says
      rows              the invariants of invariants.py (token ids, masks, pads, BOS, segments), and
                        the counters chunks / trained_tokens_kept / nonpad_positions / bos_starts
    rejects.jsonl       one parsable line per rejected record counted
    --deep              re-packs a sample of units from their input files in memory with stages.pack_unit
                        and compares arrays and counters byte for byte; a unit it cannot re-pack (inputs
                        gone or changed, tokenizer changed) is a problem, a note under `allow_skip`

Every problem names its file (and row, where one is at fault); nothing stops at the first problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packsft.config import OUTPUT_FORMATS, STRATEGIES
from packsft.errors import OutputError
from packsft.stats import UnitCounters, merge_counters, summarize
from packsft.verify.chat_turns import ChatMarkers, check_chat_turns
from packsft.verify.deep import repack_and_compare
from packsft.verify.files import StoredArrays, check_shard_files, check_shard_list
from packsft.verify.invariants import ControlIds, check_control_tokens, check_shard_arrays
from packsft.verify.violations import Violation
from packsft.write.layout import (
    DATASET_JSON,
    FORMAT_VERSION,
    MANIFEST_JSON,
    MARKER,
    PARQUET_FILE,
    REJECTS_JSONL,
    SHARDS_DIR,
    TOKEN_DTYPES,
    Topology,
    storage_dtype,
)

DEEP_SAMPLE_UNITS = 2
DATASET_KEYS = ("format_version", "config", "tokenizer", "seq_length", "dtype", "rows", "tokens", "stats",
                "counters", "shards", "skipped_files")
SPECIAL_IDS = ("bos", "eos", "pad")


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON true/false must not pass as 1/0


def _schema_problems(dataset: dict[str, Any]) -> list[str]:
    """The fields verify relies on, with the types it needs: an edited dataset.json is named, not a crash."""
    tokenizer, config = dataset["tokenizer"], dataset["config"]
    found = []
    if not _is_int(dataset["seq_length"]) or dataset["seq_length"] < 2:
        found.append(f"seq_length is {dataset['seq_length']!r}, not an integer >= 2")
    if dataset["dtype"] not in TOKEN_DTYPES:
        found.append(f"dtype is {dataset['dtype']!r}, not {' or '.join(TOKEN_DTYPES)}")
    if not isinstance(config, dict) or config.get("strategy") not in STRATEGIES or config.get("output_format") not in OUTPUT_FORMATS:
        found.append("config has no valid strategy or output_format")
    if not isinstance(tokenizer, dict) or not _is_int(tokenizer.get("vocab_size")) or not isinstance(tokenizer.get("special_ids"), dict):
        found.append("tokenizer has no vocab_size or special_ids")
    else:
        special = tokenizer["special_ids"]
        needed = [k for k in SPECIAL_IDS if k != "bos" or (isinstance(config, dict) and config.get("template") == "roles")]
        for key in needed:
            if not _is_int(special.get(key)):
                found.append(f"tokenizer.special_ids.{key} is {special.get(key)!r}, not a token id")
    if not isinstance(dataset["shards"], list) or not isinstance(dataset["counters"], dict) or not isinstance(dataset["stats"], dict):
        found.append("shards, counters or stats have the wrong type")
    return found


@dataclass(frozen=True)
class Problem:
    file: str  # relative to OUT_DIR
    message: str
    row: int | None = None  # row within the shard
    chunk: int | None = None  # global row index (what `packsft inspect --chunk` takes)

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}" + (f" (chunk {self.chunk})" if self.chunk is not None else "")
        return f"{where}: {self.message}"


@dataclass
class Report:
    """What verify found: problems (the output is wrong), notes (something could not be checked)."""

    out_dir: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    files: int = 0
    repacked: int = 0
    skipped: int = 0  # sampled units --deep could not re-pack (accepted with allow_skip)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        deep = f"; {self.repacked} unit(s) re-packed and identical" if self.repacked else ""
        deep += f"; {self.skipped} could not be re-packed (--allow-skip)" if self.skipped else ""
        return (f"ok: {self.out_dir}: {self.shards} shard(s), {self.rows:,} chunks, {self.files} files match "
                f"their sha256; masks, pads and segments consistent{deep}")


def verify_output(out_dir: str | Path, *, deep: bool = False, sample: int = DEEP_SAMPLE_UNITS,
                  allow_skip: bool = False) -> list[Problem]:
    """Every problem found in the output at out_dir (empty when it is sound)."""
    return check_output(out_dir, deep=deep, sample=sample, allow_skip=allow_skip).problems


def check_output(out_dir: str | Path, *, deep: bool = False, sample: int = DEEP_SAMPLE_UNITS,
                 allow_skip: bool = False) -> Report:
    """Check the output at out_dir; `deep` also re-packs `sample` units from their inputs, and a unit it cannot
    re-pack is a problem, or a note where `allow_skip`."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: no such folder. Pass the OUT_DIR of a `packsft pack` run")
    report = Report(out_dir)
    dataset = _read_dataset(out_dir, report)
    if dataset is None:
        return report
    seq_length, config, tokenizer = dataset["seq_length"], dataset["config"], dataset["tokenizer"]
    vocab_size = tokenizer["vocab_size"]
    if str(storage_dtype(vocab_size)) != dataset["dtype"]:
        report.problems.append(Problem(DATASET_JSON, f"dtype {dataset['dtype']} cannot store a vocabulary of {vocab_size}"))
    present, problems = check_shard_list(out_dir, dataset)
    report.problems += [Problem(*problem) for problem in problems]
    manifests = []
    for index, entry in present:
        shard_dir = f"{SHARDS_DIR}/{entry['name']}"
        manifest, arrays, problems, files = check_shard_files(out_dir, dataset, entry)
        report.problems += [Problem(f"{shard_dir}/{name}", message) for name, message in problems]
        report.files += files
        report.shards += 1
        if manifest is not None:
            manifests.append(manifest)
        if arrays is not None and manifest is not None:
            _check_rows(report, shard_dir, arrays, manifest, dataset, _listed_rows(dataset["shards"][:index]))
    report.rows = _listed_rows(dataset["shards"])
    _check_totals(report, dataset, manifests, seq_length)
    _check_rejects(report, dataset)
    if deep and report.ok:
        _check_deep(report, dataset, _sample(len(dataset["shards"]), sample), allow_skip)
    elif deep:
        report.notes.append("deep check skipped: fix the problems above first")
    if config.get("trust_remote_code"):
        report.notes.append("this output was packed with --trust-remote-code (the tokenizer ran code from its folder)")
    return report


def _check_deep(report: Report, dataset: dict[str, Any], units: list[int], allow_skip: bool) -> None:
    """Re-pack `units`: what --deep cannot re-pack fails the check unless `allow_skip` (then it is a note)."""
    result = repack_and_compare(report.out_dir, dataset, units)
    report.problems += [Problem(*problem) for problem in result.problems]
    report.repacked = result.repacked
    report.skipped = len(units) - result.repacked
    if allow_skip:
        report.notes += [reason for _, reason in result.skipped]
    else:
        report.problems += [Problem(file, f"{reason.rstrip('.')}. Run verify where the inputs and tokenizer are, or pass "
                                          "--allow-skip to accept units --deep cannot re-pack")
                            for file, reason in result.skipped]


def _read_dataset(out_dir: Path, report: Report) -> dict[str, Any] | None:
    path = out_dir / DATASET_JSON
    if not path.exists():
        hint = "the pack did not finish; rerun it" if (out_dir / MARKER).exists() else "not a packsft output"
        report.problems.append(Problem(DATASET_JSON, f"missing ({hint})"))
        return None
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.problems.append(Problem(DATASET_JSON, f"not valid JSON ({exc}); the output is corrupt"))
        return None
    missing = [key for key in DATASET_KEYS if not isinstance(dataset, dict) or key not in dataset]
    if missing:
        report.problems.append(Problem(DATASET_JSON, f"incomplete: no {', '.join(missing)}"))
        return None
    schema = _schema_problems(dataset)
    if schema:
        report.problems += [Problem(DATASET_JSON, message) for message in schema]
        return None
    if dataset["format_version"] != FORMAT_VERSION:
        report.problems.append(Problem(DATASET_JSON, f"format version {dataset['format_version']!r}; this packsft "
                                       f"reads version {FORMAT_VERSION}"))
        return None
    return dataset


def _format_checks(arrays: StoredArrays, dataset: dict[str, Any], counters: dict[str, Any]) -> list[Violation]:
    """Control tokens where the output's format (role tokens, or a chat template's headers) puts none.

    `counters` are the shard's: assistant turns the records keep untrained (`weight: 0`, a prompt-completion's
    prompt, `--turns last|inference`) free their end-of-turn from having to be trained.
    """
    config = dataset["config"]
    rows = (arrays.tokens, arrays.loss_mask, np.asarray(arrays.segment_lengths), np.asarray(arrays.row_segments))
    found = []
    control = ControlIds.of(dataset["tokenizer"].get("special_ids", {}), config.get("template"))
    if control is not None:
        found += check_control_tokens(*rows, control=control, mask=config.get("mask"),
                                      pad_multiple=Topology.of(dataset).pad_multiple)
    markers = ChatMarkers.of(dataset["tokenizer"].get("chat_markers"), config.get("template"),
                             dataset["tokenizer"].get("stop_ids"))
    if markers is not None and config.get("mask") == "assistant_only":
        found += check_chat_turns(*rows, markers=markers, unprompted=config.get("unprompted", "keep"),
                                  context_turns=bool(counters.get("assistant_turns_untrained")))
    return found


def _check_rows(report: Report, shard_dir: str, arrays: StoredArrays, manifest: dict[str, Any],
                dataset: dict[str, Any], first_chunk: int) -> None:
    special = dataset["tokenizer"].get("special_ids", {})
    for v in check_shard_arrays(
        arrays.tokens, arrays.loss_mask, arrays.segment_lengths, arrays.row_segments,
        vocab_size=dataset["tokenizer"]["vocab_size"], pad_id=special.get("pad"), bos_id=special.get("bos"),
        strategy=dataset["config"].get("strategy"), topology=Topology.of(dataset),
    ):
        chunk = None if v.row is None else first_chunk + v.row
        file = v.array if arrays.segment_lengths is not None else PARQUET_FILE
        report.problems.append(Problem(f"{shard_dir}/{file}", v.message, v.row, chunk))
    if arrays.segment_lengths is not None and not report.problems:
        for v in _format_checks(arrays, dataset, manifest.get("counters", {})):
            chunk = None if v.row is None else first_chunk + v.row
            report.problems.append(Problem(f"{shard_dir}/{v.array}", v.message, v.row, chunk))
    counters = manifest.get("counters", {})
    found = {"chunks": len(arrays.tokens), "trained_tokens_kept": int(arrays.loss_mask.sum(dtype=np.int64))}
    if arrays.segment_lengths is not None:
        found["nonpad_positions"] = int(np.asarray(arrays.segment_lengths).sum(dtype=np.int64))
    if special.get("bos") is not None:
        found["bos_starts"] = int((np.asarray(arrays.tokens[:, 0]) == special["bos"]).sum())
    for key, value in found.items():
        if counters.get(key) != value:
            report.problems.append(Problem(f"{shard_dir}/{MANIFEST_JSON}",
                                           f"counters.{key} is {counters.get(key)!r}, the arrays hold {value}"))


def _check_totals(report: Report, dataset: dict[str, Any], manifests: list[dict[str, Any]], seq_length: int) -> None:
    rows = _listed_rows(dataset["shards"])
    expected = {"rows": rows, "tokens": rows * (seq_length + 1)}
    for key, value in expected.items():
        if dataset[key] != value:
            report.problems.append(Problem(DATASET_JSON, f"{key} is {dataset[key]!r}, the shards hold {value}"))
    if len(manifests) == len(dataset["shards"]):
        try:
            summed = _json(merge_counters(manifest.get("counters", {}) for manifest in manifests).to_dict())
        except (ValueError, TypeError, AttributeError):  # counters edited into names or values packsft never writes
            summed = None
        if summed != dataset["counters"]:
            report.problems.append(Problem(DATASET_JSON, "counters are not the sum of the shard manifests' counters"))
    try:
        stats = summarize(UnitCounters.from_dict(dataset["counters"]), seq_length, len(dataset.get("skipped_files", [])))
    except (ValueError, TypeError, AttributeError):  # as above
        stats = None
    if _json(stats) != dataset["stats"]:
        report.problems.append(Problem(DATASET_JSON, "stats do not follow from its counters (edited?)"))


def _check_rejects(report: Report, dataset: dict[str, Any]) -> None:
    path = report.out_dir / REJECTS_JSONL
    counted = dataset["counters"].get("records_rejected", 0)
    if not path.exists():
        report.problems.append(Problem(REJECTS_JSONL, "missing"))
        return
    # JSON Lines are split on "\n" only: an excerpt may hold U+2028 or other characters splitlines() breaks at.
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            valid = isinstance(entry, dict) and {"file", "row", "reason"} <= set(entry)
        except json.JSONDecodeError:
            valid = False
        if not valid:
            report.problems.append(Problem(REJECTS_JSONL, f"line {number} is not a reject entry (file, row, reason)"))
            return
    if len(lines) != counted:
        report.problems.append(Problem(REJECTS_JSONL, f"lists {len(lines)} records, dataset.json counts {counted} rejected"))


def _listed_rows(entries: list[Any]) -> int:
    return int(sum(entry.get("rows", 0) for entry in entries if isinstance(entry, dict)))


def _sample(units: int, sample: int) -> list[int]:
    """Up to `sample` unit indices spread evenly from first to last (deterministic)."""
    if units == 0 or sample <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, units - 1, min(sample, units))})


def _json(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value))
