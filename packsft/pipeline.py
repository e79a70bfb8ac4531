"""The pack job: plan units, then per unit read -> render -> split -> pack -> write; finally dataset.json.

One unit of work is a row-group range of one input file (plan.py); it becomes one immutable shard.
Packing happens over a whole unit, so best-fit sees every conversation of the unit at once. Units
run in this process or in a worker pool (parallel.py); outdir.py keeps the plan, resumes and merges.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

import packsft
from packsft.chunks import empty_chunks
from packsft.config import PackConfig
from packsft.errors import ConfigError, InputError, OutputError, PacksftError
from packsft.outdir import failed_path
from packsft.plan import DEFAULT_UNIT_BYTES, Unit, assign_units, available_cpus, plan_inputs, unit_fingerprint
from packsft.reader import open_input
from packsft.records import RejectLedger, parse_role_map
from packsft.stats import add_counters, summarize
from packsft.tokenizer import PackTokenizer, load_tokenizer
from packsft.unit import pack_unit
from packsft.writer import DATASET_JSON, REJECTS_JSONL, storage_dtype, write_shard

if TYPE_CHECKING:
    from packsft.outdir import Plan


@dataclass
class PackResult:
    out_dir: Path
    dataset: dict[str, Any] | None  # None when units (of other array tasks) are still missing
    seconds: float
    packed: int = 0  # units packed by this run
    skipped: int = 0  # units of this run already complete from an earlier run
    missing: int = 0  # planned units not complete after this run (all array tasks together)


def write_unit(
    unit: Unit,
    fingerprint: str,
    out_dir: Path,
    config: PackConfig,
    tokenizer: PackTokenizer,
    *,
    strict: bool = False,
    skip_bad_files: bool = False,
    progress: tqdm | None = None,
) -> dict[str, Any]:
    """Pack one unit and write its shard (with its rejects.jsonl); returns the shard manifest.

    A failure is recorded in shards/.failed-NNNNN for `packsft status`, then raised. Under
    --skip-bad-files a file that breaks while being read (truncated, a bad JSON line) becomes an empty
    shard whose manifest says why; merge lists it in dataset.json `skipped_files`.
    """
    failed = failed_path(out_dir, unit.index)
    try:
        rejects = RejectLedger(strict=strict)
        source = open_input(unit.path, config.format, config.input_format, parse_role_map(config.role_map))
        inputs = {"path": unit.name, "bytes": unit.file_bytes, "row_groups": list(unit.row_groups or ()),
                  "first_row": unit.first_row}
        skipped = None
        try:
            chunks, counters = pack_unit(unit, source, config, tokenizer, rejects, progress)
        except InputError as exc:
            if not skip_bad_files:
                raise
            skipped = {"path": unit.name, "error": str(exc)}
            if progress is not None:
                progress.write(f"packsft: skipping bad file: {exc}", file=sys.stderr)
            rejects = RejectLedger(strict=strict)
            chunks = empty_chunks(config.seq_length)
            counters = {key: 0 for key in ("chunks", "nonpad_positions", "trained_tokens_kept", "bos_starts")}
        rows = source.num_rows if source.num_rows is not None else source.rows_read
        manifest = {
            "unit": unit.index,
            "inputs": [{**inputs, "rows": unit.rows if unit.row_groups is not None else rows, **source.describe()}],
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "fingerprint": fingerprint,
            "config": config.to_dict(),
            "counters": counters,
            **({"skipped": skipped} if skipped else {}),
        }
        written = write_shard(out_dir, unit.index, chunks, vocab_size=tokenizer.vocab_size,
                              output_format=config.output_format, manifest=manifest,
                              extra_files={REJECTS_JSONL: rejects.to_jsonl().encode()})
    except Exception as exc:
        kind = "error" if isinstance(exc, PacksftError) else f"bug ({type(exc).__name__})"
        failed.write_text(f"{kind}: {exc}\n")
        raise
    failed.unlink(missing_ok=True)
    return written


# --workers 0 (auto) starts a process per CPU only for inputs this big: below it, starting the pool
# costs more than it saves.
AUTO_WORKERS_MIN_BYTES = 4 << 20


def auto_workers(units: list[Unit]) -> int:
    """Workers for --workers 0: one process per available CPU (at most one per unit) for big inputs.

    Separate single-threaded tokenizers in processes overlap the Python stages of one unit with the
    tokenizing of another: on ShareGPT with GPT-2 on this project's 2-core machine, bestfit packs 8
    shards in ~49 s with 2 workers against ~52 s with 1 (BENCHMARKS.md).
    """
    if sum(unit.bytes for unit in units) < AUTO_WORKERS_MIN_BYTES:
        return 1
    return max(1, min(available_cpus(), len(units)))


def make_plan(
    data_dir: Path, out_dir: Path, config: PackConfig, unit_bytes: int = DEFAULT_UNIT_BYTES,
    skip_bad_files: bool = False,
) -> tuple[Plan, PackTokenizer]:
    """The plan of DATA_DIR for `config` (units and their fingerprints) and the loaded tokenizer."""
    from packsft.outdir import Plan

    if out_dir.resolve() == data_dir.resolve() or data_dir.resolve() in out_dir.resolve().parents:
        raise OutputError(f"{out_dir}: OUT_DIR must not be inside DATA_DIR ({data_dir}); pick another folder")
    # Every file is opened and its schema checked before anything is written.
    units, skipped = plan_inputs(data_dir, config, unit_bytes, skip_bad_files=skip_bad_files)
    tokenizer = load_tokenizer(config.tokenizer, config.template, trust_remote_code=config.trust_remote_code)
    fingerprints = [unit_fingerprint(unit, config, tokenizer.fingerprint) for unit in units]
    plan = Plan(str(data_dir), config.to_dict(), tokenizer.identity(), unit_bytes, units, fingerprints,
                skipped_files=skipped)
    return plan, tokenizer


def run_pack(
    data_dir: str | Path,
    out_dir: str | Path,
    config: PackConfig,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    strict: bool = False,
    workers: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    skip_bad_files: bool = False,
) -> PackResult:
    """Pack the units of DATA_DIR assigned to `shard_index` into OUT_DIR; resume what is already there.

    With num_shards == 1 (every unit is this run's), dataset.json is written at the end; array tasks
    leave that to `packsft merge`. Output bytes never depend on workers, num_shards or interruptions.

    Args:
        strict: stop at the first bad record (`file:row: reason`) instead of skipping and counting it.
        skip_bad_files: list unreadable files in dataset.json `skipped_files` and go on, instead of
            stopping with an error naming the file.
    """
    from packsft.outdir import incomplete_units, merge, prepare_plan, remove_temporaries, unit_complete
    from packsft.parallel import UnitJob, pack_units, stop_on_signals

    started = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard-index {shard_index} must be in 0..{num_shards - 1} for --num-shards {num_shards}")
    if workers < 0:
        raise ConfigError(f"--workers must be 0 (auto) or more, got {workers}")
    plan, tokenizer = make_plan(data_dir, out_dir, config, unit_bytes, skip_bad_files)
    prepare_plan(out_dir, plan, overwrite)
    if not quiet:
        _say_detected(plan)
    units, fingerprints = plan.units, plan.fingerprints

    mine = assign_units(units, num_shards)[shard_index]
    remove_temporaries(out_dir, mine)
    todo = [units[i] for i in mine if not unit_complete(out_dir, i, fingerprints[i])]
    if todo:
        (out_dir / DATASET_JSON).unlink(missing_ok=True)  # the output is no longer complete
    job = UnitJob(out_dir, config, strict, tokenizer.fingerprint, skip_bad_files)
    with stop_on_signals(out_dir, plan):
        pack_units(todo, [fingerprints[u.index] for u in todo], job, tokenizer, workers or auto_workers(todo), quiet)
    missing = incomplete_units(out_dir, plan)
    dataset = merge(out_dir) if num_shards == 1 and not missing else None
    return PackResult(out_dir, dataset, time.perf_counter() - started, len(todo), len(mine) - len(todo), len(missing))


def _say_detected(plan) -> None:
    """One stderr line per input format auto chose (and per skipped file), e.g. `sharegpt for 8 files`."""
    files = {unit.name: unit for unit in plan.units if unit.detected}
    chosen: Counter[tuple[str, str]] = Counter((unit.input_format, unit.detected) for unit in files.values())
    for (name, why), count in sorted(chosen.items()):
        print(f"packsft: input format {name} (auto, from the {why}) for {count} file{'s' * (count != 1)}",
              file=sys.stderr)
    for entry in plan.skipped_files:
        print(f"packsft: skipping bad file: {entry['error']}", file=sys.stderr)


def build_dataset_manifest(
    manifests: list[dict[str, Any]],
    config: PackConfig,
    tokenizer: PackTokenizer | dict[str, Any],
    data_dir: Path,
    skipped: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """dataset.json from the shard manifests; `tokenizer` is a PackTokenizer or its identity().

    `skipped` lists input files left out under --skip-bad-files (with why).
    """
    identity = tokenizer.identity() if isinstance(tokenizer, PackTokenizer) else tokenizer
    skipped = (skipped or []) + [m["skipped"] for m in manifests if m.get("skipped")]
    counters: dict[str, Any] = {}
    for manifest in manifests:
        add_counters(counters, manifest["counters"])
    rows = sum(m["rows"] for m in manifests)
    return {
        "format_version": packsft.FORMAT_VERSION,
        "packsft_version": packsft.__version__,
        "config": config.to_dict(),
        "data_dir": str(data_dir),
        "tokenizer": identity,
        "seq_length": config.seq_length,
        "dtype": str(storage_dtype(identity["vocab_size"])),
        "rows": rows,
        "tokens": rows * (config.seq_length + 1),
        "stats": summarize(counters, config.seq_length, len(skipped)),
        "counters": counters,
        "skipped_files": skipped,
        "shards": [
            {"name": m["shard"], "rows": m["rows"], "inputs": m["inputs"], "files": m["files"],
             "fingerprint": m.get("fingerprint")}
            for m in manifests
        ],
    }
