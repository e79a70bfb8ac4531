"""`run_pack`: plan the units, run the missing ones on an executor, and merge once every unit is complete.

    run_pack(DATA, OUT_DIR, config, executor=LocalExecutor(workers))
      make_plan          DATA -> units + fingerprints, the tokenizer loaded and proven (run/plan.py)
      OutDir.prepare     OUT_DIR/plan.json written, or an earlier one with the same identity resumed (run/outdir.py)
      executor.run       this task's missing units packed: local pool, SLURM array or Ray (run/executor.py)
      merge              dataset.json, when every unit of the plan is complete (run/finish.py)

One unit of work is a row-group range of one input file; it becomes one immutable shard. Packing happens
over a whole unit, so best-fit sees every conversation of the unit at once.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packsft.config import PackConfig
from packsft.errors import ConfigError, PackInterrupted, UnusableOutputError
from packsft.read.heldout import fraction_threshold, records_threshold
from packsft.read.inputs import list_inputs
from packsft.read.reader import record_keys
from packsft.render.tokenizer import PackTokenizer
from packsft.run.executor import Executor
from packsft.run.finish import finish, resume_hint
from packsft.run.local import LocalExecutor
from packsft.run.outdir import OutDir
from packsft.run.plan import (
    DEFAULT_UNIT_BYTES,
    Plan,
    absolute_listing,
    assign_units,
    data_specs,
    loaded_config,
    make_plan,
    plan_inputs,
)
from packsft.run.unit import UnitJob
from packsft.stages import open_unit


@dataclass
class PackResult:
    out_dir: Path
    dataset: dict[str, Any] | None  # None when units (of other array tasks) are still missing
    seconds: float
    packed: int = 0  # units this run packed (an array job: queued)
    skipped: int = 0  # units of this run already complete from an earlier run
    missing: int = 0  # planned units not complete after this run (all array tasks together)
    eval: PackResult | None = None  # the held-out split, packed into OUT_DIR/eval (--eval-fraction, --eval-records)


# The hint to pass --group-files: at least this many input files, each under 1/SMALL_FILE_SHARE of a unit.
SMALL_FILES_HINT = 16
SMALL_FILE_SHARE = 4


def run_pack(
    data: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    config: PackConfig,
    *,
    executor: Executor | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    strict: bool = False,
    workers: int = 0,
    num_tasks: int = 1,
    task_index: int = 0,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    skip_bad_files: bool = False,
    store: str | Path | None = None,
    no_store: bool = False,
    earlier: Plan | None = None,
) -> PackResult:
    """Pack the units of DATA (a folder, glob, files or URLs; or a list of them) assigned to `task_index`
    into OUT_DIR; resume what is already there.

    With num_tasks == 1 (every unit is this run's), dataset.json is written once every unit is complete;
    array tasks leave that to `packsft merge`. Output bytes never depend on the executor, workers,
    num_tasks or interruptions.

    Args:
        executor: where the units run; LocalExecutor(workers) when None.
        workers: processes of the default LocalExecutor (0: one per CPU for big inputs); not with `executor`.
        strict: stop at the first bad record (`file:row: reason`) instead of skipping and counting it.
        skip_bad_files: list unreadable files in dataset.json `skipped_files` and go on, instead of
            stopping with an error naming the file.
        store: the rendered-token store (store/rendered.py) each unit is looked up in before it is read, and saved
            to after (default OUT_DIR/rendered; several outputs may share one); none with `no_store`.
        earlier: the plan of the output this run re-packs (run/repack.py): every unit is built from the store,
            none is read or tokenized.
    """
    if config.held_out and config.split is None:
        return _pack_split(data, out_dir, config, executor=executor, overwrite=overwrite, quiet=quiet, strict=strict,
                           workers=workers, num_tasks=num_tasks, task_index=task_index, unit_bytes=unit_bytes,
                           skip_bad_files=skip_bad_files, store=store, no_store=no_store)
    started = time.perf_counter()
    executor = _checked_executor(executor, workers, config, num_tasks, task_index)
    specs, out, config = executor.prepare(data_specs(data), out_dir, config)
    with executor.session():
        plan, tokenizer = make_plan(specs, out.path, config, unit_bytes, skip_bad_files, quiet, earlier,
                                    mix_tokens=out.mix_tokens() if config.mix is not None else None)
        plan.store = None if no_store else str(Path(store or out.default_store).resolve())
        out.prepare(plan, overwrite, executor.name, executor.settings(out, plan))
        if not quiet:
            _say_plan(plan, tokenizer, config)
        config = _worker_config(config, plan, tokenizer)
        mine = assign_units(plan.units, num_tasks)[task_index]
        todo = out.units_to_pack(plan, mine)
        job = UnitJob(out, config, strict, tokenizer.fingerprint, skip_bad_files,
                      store=Path(plan.store) if plan.store else None, store_only=earlier is not None)
        with stop_on_signals(out, plan):
            executor.run(plan, todo, job, tokenizer, quiet)
        missing = out.incomplete_units(plan)
        dataset = _merge(out, reused=len(mine) - len(todo)) if num_tasks == 1 and not missing else None
    return PackResult(out.path, dataset, time.perf_counter() - started, len(todo), len(mine) - len(todo), len(missing))


def _worker_config(config: PackConfig, plan: Plan, tokenizer: PackTokenizer) -> PackConfig:
    """The config the units are packed with: the proven encoder and the template as the tokenizer loaded them, and
    a --mix as the plan resolved it (sources, tokens, rates)."""
    config = loaded_config(config, tokenizer)
    return replace(config, mix=plan.config["mix"]) if config.mix is not None else config


def _checked_executor(executor: Executor | None, workers: int, config: PackConfig, num_tasks: int,
                      task_index: int) -> Executor:
    """The executor run_pack runs the units with (LocalExecutor(workers) when None), its options checked."""
    if executor is not None and workers:
        raise ConfigError(f"workers={workers} is for the default LocalExecutor; pass LocalExecutor({workers})")
    executor = executor or LocalExecutor(workers)
    if config.mix is not None and not isinstance(executor, LocalExecutor):
        raise ConfigError(f"--mix runs with packsft pack (local workers, or array tasks with --num-tasks and packsft "
                          f"merge), not with the {executor.name} executor yet; pack the mix there with --num-tasks "
                          "array tasks")
    if not 0 <= task_index < num_tasks:
        raise ConfigError(f"--task-index {task_index} must be in 0..{num_tasks - 1} for --num-tasks {num_tasks}")
    return executor


def _pack_split(data: str | Path | Sequence[str | Path], out_dir: str | Path, config: PackConfig, *,
                executor: Executor | None, unit_bytes: int, **options: Any) -> PackResult:
    """Pack the training records into OUT_DIR and the held-out records into OUT_DIR/eval, two complete outputs.

    Each record goes to one side by its content (read/heldout.py); the threshold is resolved once and stored in
    both configs, so resuming, merging and verify --deep split the records the same way.
    """
    if executor is not None and not isinstance(executor, LocalExecutor):
        raise ConfigError(f"--eval-fraction and --eval-records run with packsft pack (local workers, or array tasks "
                          f"with --num-tasks and packsft merge), not with the {executor.name} executor yet; pack the "
                          "split there with --num-tasks array tasks")
    specs = data_specs(data)
    threshold = eval_threshold(specs, config, unit_bytes, options["skip_bad_files"])
    train = run_pack(specs, out_dir, replace(config, split="train", split_threshold=threshold), executor=executor,
                     unit_bytes=unit_bytes, **options)
    options["overwrite"] = False  # the training run cleared OUT_DIR, eval/ included
    # The held-out records go to eval/ once each: --mix samples the training side only.
    train.eval = run_pack(specs, OutDir(Path(out_dir)).eval.path,
                          replace(config, split="eval", split_threshold=threshold, mix=None),
                          executor=executor, unit_bytes=unit_bytes, **options)
    return train


def eval_threshold(specs: list[str], config: PackConfig, unit_bytes: int, skip_bad_files: bool) -> int:
    """The held-out split's key threshold: from --eval-fraction, or from the keys of every record for
    --eval-records (one read of the inputs, no tokenizing)."""
    if config.eval_records is None:
        return fraction_threshold(config.eval_fraction or 0.0)
    units, _ = plan_inputs(absolute_listing(list_inputs(specs)), config, unit_bytes, skip_bad_files=skip_bad_files)
    keys = (key for unit in units for part, source in zip(unit.parts, open_unit(unit.parts, config))
            for key in record_keys(source, part.name, part.row_groups, config.source_filter))
    return records_threshold(keys, config.eval_records)


def _merge(out: OutDir, reused: int) -> dict[str, Any]:
    """finish(), saying which units a failed outcome check reused: a rerun after fixing the environment (a package
    installed, a tokenizer replaced) would only resume them again."""
    try:
        return finish(out)
    except UnusableOutputError as exc:
        if not reused:
            raise
        raise UnusableOutputError(f"{exc}. {reused} of these units were packed by an earlier run and resumed as "
                                  "they were; if what made them fail has been fixed since, rerun with --overwrite "
                                  "to pack them again") from None


@contextlib.contextmanager
def stop_on_signals(out: OutDir, plan: Plan) -> Iterator[None]:
    """Turn SIGTERM (preemption, scancel) like SIGINT into a clean stop with a message on how to resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt as stop:
        missing = out.incomplete_units(plan)
        how = resume_hint(out, plan, missing) if missing else f"packsft merge {shlex.quote(str(out.path))}"
        raise PackInterrupted(
            f"stopped by {stop.args[0] if stop.args else 'SIGINT'}: {len(plan.units) - len(missing)} of "
            f"{len(plan.units)} units are complete and kept. Rerun the same command to resume ({how})"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say_plan(plan: Plan, tokenizer: PackTokenizer, config: PackConfig) -> None:
    """What the plan chose on its own, one stderr line each: input formats, skipped files, reference paths of the
    tokenizer, the chat template of --template auto."""
    _say_detected(plan)
    _say_tokenizer_paths(tokenizer)
    if config.template == "auto" and tokenizer.template == "chat":
        print(f"packsft: --template auto renders with {_chat_template_source(tokenizer)} "
              "(--template roles for role tokens)", file=sys.stderr)


def _say_tokenizer_paths(tokenizer: PackTokenizer) -> None:
    """One stderr line per reference path the proofs at load chose instead of a fast one."""
    if tokenizer.encoder_note:
        print(f"packsft: encoding content with the HF tokenizer ({tokenizer.encoder_note})", file=sys.stderr)
    if tokenizer.template == "chat" and tokenizer.chat_renderer == "hf":
        print("packsft: rendering with transformers' apply_chat_template (its jinja renderer, called directly, "
              "differs from it on a probe conversation)", file=sys.stderr)


def _chat_template_source(tokenizer: PackTokenizer) -> str:
    if tokenizer.chat_template_file:
        return f"the chat template of {tokenizer.chat_template_file}"
    return f"the chat template of tokenizer {tokenizer.name!r}"


def _say_detected(plan: Plan) -> None:
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
