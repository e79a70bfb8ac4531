"""The pack job: plan units, then per unit read -> render -> split -> pack -> write; finally dataset.json.

One unit of work is a row-group range of one input file (plan.py); it becomes one immutable shard.
Packing happens over a whole unit, so best-fit sees every conversation of the unit at once. Units
run in this process or in a worker pool (parallel.py); outdir.py keeps the plan, resumes and merges.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packsft.config import PackConfig
from packsft.errors import ConfigError, OutputError, UnusableOutputError
from packsft.read.inputs import is_url, list_inputs
from packsft.render.chat_proof import output_identity, with_chat_path_proven
from packsft.render.tokenizer import PackTokenizer, load_tokenizer
from packsft.run.outdir import (
    Plan,
    incomplete_units,
    merge,
    prepare_plan,
    remove_temporaries,
    unit_complete,
)
from packsft.run.plan import (
    DEFAULT_UNIT_BYTES,
    Unit,
    assign_units,
    available_cpus,
    plan_inputs,
    unit_fingerprint,
)
from packsft.run.workers import UnitJob, pack_units, stop_on_signals
from packsft.write.layout import DATASET_JSON


@dataclass
class PackResult:
    out_dir: Path
    dataset: dict[str, Any] | None  # None when units (of other array tasks) are still missing
    seconds: float
    packed: int = 0  # units packed by this run
    skipped: int = 0  # units of this run already complete from an earlier run
    missing: int = 0  # planned units not complete after this run (all array tasks together)


# Packs the units a run still needs (units, their fingerprints, the job, quiet) once plan.json is written;
# the default is pack_units in local processes, packsft.run.ray.RayUnitRunner sends each to a Ray task.
UnitRunner = Callable[[list[Unit], list[str], UnitJob, bool], None]

# The hint to pass --group-files: at least this many input files, each under 1/SMALL_FILE_SHARE of a unit.
SMALL_FILES_HINT = 16
SMALL_FILE_SHARE = 4

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
    data: str | Path | Sequence[str | Path], out_dir: Path, config: PackConfig, unit_bytes: int = DEFAULT_UNIT_BYTES,
    skip_bad_files: bool = False,
) -> tuple[Plan, PackTokenizer]:
    """The plan of DATA (folders, globs, files or URLs) for `config` (units and their fingerprints)
    and the loaded tokenizer.

    The plan's config names the encoder the tokenizer got (`auto` resolved to `fast` or `hf`).
    """

    specs = [str(spec) for spec in ([data] if isinstance(data, (str, Path)) else data)]
    listing = list_inputs(specs)
    for spec in specs:
        folder = Path(spec)
        if not is_url(spec) and folder.is_dir() and (out_dir.resolve() == folder.resolve()
                                                     or folder.resolve() in out_dir.resolve().parents):
            raise OutputError(f"{out_dir}: OUT_DIR must not be inside DATA_DIR ({spec}); pick another folder")
    # Every file is opened and its schema checked before anything is written.
    units, skipped = plan_inputs(listing, config, unit_bytes, skip_bad_files=skip_bad_files)
    tokenizer = load_tokenizer(config.tokenizer, config.template, trust_remote_code=config.trust_remote_code,
                               encoder=config.encoder)
    tokenizer = with_chat_path_proven(tokenizer)
    config = replace(config, encoder=tokenizer.encoder)
    fingerprints = [unit_fingerprint(unit, config, tokenizer.fingerprint) for unit in units]
    inputs = [spec if is_url(spec) else str(Path(spec).resolve()) for spec in specs]
    plan = Plan(listing.root, config.to_dict(), output_identity(tokenizer), unit_bytes, units, fingerprints,
                skipped_files=skipped, inputs=inputs)
    return plan, tokenizer


def run_pack(
    data: str | Path | Sequence[str | Path],
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
    runner: UnitRunner | None = None,
) -> PackResult:
    """Pack the units of DATA (a folder, glob, files or URLs; or a list of them) assigned to `shard_index`
    into OUT_DIR; resume what is already there.

    With num_shards == 1 (every unit is this run's), dataset.json is written at the end; array tasks
    leave that to `packsft merge`. Output bytes never depend on workers, num_shards or interruptions.

    Args:
        strict: stop at the first bad record (`file:row: reason`) instead of skipping and counting it.
        skip_bad_files: list unreadable files in dataset.json `skipped_files` and go on, instead of
            stopping with an error naming the file.
        runner: packs the units elsewhere (a Ray cluster) instead of in `workers` local processes.
    """

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard-index {shard_index} must be in 0..{num_shards - 1} for --num-shards {num_shards}")
    if workers < 0:
        raise ConfigError(f"--workers must be 0 (auto) or more, got {workers}")
    plan, tokenizer = make_plan(data, out_dir, config, unit_bytes, skip_bad_files)
    plan.ray = getattr(runner, "plan_entry", None)  # how a rerun resumes: `packsft ray submit`, not `pack`
    prepare_plan(out_dir, plan, overwrite)
    if not quiet:
        _say_detected(plan)
    if not quiet:
        _say_tokenizer_paths(tokenizer)
    config = replace(config, encoder=tokenizer.encoder)  # workers take the proven encoder as it is
    units, fingerprints = plan.units, plan.fingerprints

    mine = assign_units(units, num_shards)[shard_index]
    remove_temporaries(out_dir, mine)
    todo = [units[i] for i in mine if not unit_complete(out_dir, i, fingerprints[i])]
    if todo:
        (out_dir / DATASET_JSON).unlink(missing_ok=True)  # the output is no longer complete
    job = UnitJob(out_dir, config, strict, tokenizer.fingerprint, skip_bad_files)
    todo_fingerprints = [fingerprints[u.index] for u in todo]
    with stop_on_signals(out_dir, plan):
        if runner is None:
            pack_units(todo, todo_fingerprints, job, tokenizer, workers or auto_workers(todo), quiet)
        else:
            runner(todo, todo_fingerprints, job, quiet)
    missing = incomplete_units(out_dir, plan)
    dataset = _merge(out_dir, reused=len(mine) - len(todo)) if num_shards == 1 and not missing else None
    return PackResult(out_dir, dataset, time.perf_counter() - started, len(todo), len(mine) - len(todo), len(missing))


def _merge(out_dir: Path, reused: int) -> dict[str, Any]:
    """merge(), saying which units a failed outcome check reused: a rerun after fixing the environment (a package
    installed, a tokenizer replaced) would only resume them again."""
    try:
        return merge(out_dir)
    except UnusableOutputError as exc:
        if not reused:
            raise
        raise UnusableOutputError(f"{exc}. {reused} of these units were packed by an earlier run and resumed as "
                                  "they were; if what made them fail has been fixed since, rerun with --overwrite "
                                  "to pack them again") from None


def _say_tokenizer_paths(tokenizer: PackTokenizer) -> None:
    """One stderr line per reference path the proofs at load chose instead of a fast one."""
    if tokenizer.encoder_note:
        print(f"packsft: encoding content with the HF tokenizer ({tokenizer.encoder_note})", file=sys.stderr)
    if tokenizer.template == "chat" and tokenizer.chat_renderer == "hf":
        print("packsft: rendering with transformers' apply_chat_template (its jinja renderer, called directly, "
              "differs from it on a probe conversation)", file=sys.stderr)


def _say_detected(plan) -> None:
    """One stderr line per input format auto chose (and per skipped file), e.g. `sharegpt for 8 files`;
    conversations stored as JSON text are named too, also when --input-format was given."""
    files = {part.name: part for unit in plan.units for part in unit.parts}
    chosen: Counter[tuple[str, str]] = Counter((unit.input_format, unit.detected) for unit in files.values()
                                               if unit.detected)
    for (name, why), count in sorted(chosen.items()):
        print(f"packsft: input format {name} (auto, from the {why}) for {_files(count)}", file=sys.stderr)
    given = Counter(unit.input_format for unit in files.values() if unit.json_text and not unit.detected)
    for name, count in sorted(given.items()):
        print(f"packsft: input format {name}, conversations as JSON text (decoded per record) in {_files(count)}",
              file=sys.stderr)
    for entry in plan.skipped_files:
        print(f"packsft: skipping bad file: {entry['error']}", file=sys.stderr)
    small = sum(1 for unit in plan.units if not unit.more and unit.file_bytes * SMALL_FILE_SHARE <= plan.unit_bytes)
    if small >= SMALL_FILES_HINT and not plan.pack_config().group_files:
        print(f"packsft: {small} input files are each under 1/{SMALL_FILE_SHARE} of a unit (--unit-mib) and pack alone, "
              "each with its own mostly empty last row; --group-files packs them together", file=sys.stderr)


def _files(count: int) -> str:
    return f"{count} file{'s' * (count != 1)}"
