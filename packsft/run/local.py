"""LocalExecutor: the units in this process or in a pool of worker processes (`packsft pack`).

    parent: plan, tokenizer fingerprint, progress bar          (holds no unit data)
      |-- worker 1: RAYON_NUM_THREADS = cpus / workers, own tokenizer, one unit at a time -> shard
      |-- worker 2: ...

Each worker packs whole units and writes their shards itself, so only a unit's row count travels
back; the parent's memory does not grow with the number of units. The tokenizer's Rust thread pool
is sized before the tokenizer loads in each worker (forked from a clean fork server), so N workers
share the cores instead of each starting one thread per core. A unit's bytes do not depend on the
thread count, so any number of workers writes the same output. The fork server and the workers die with the
parent, also when it is killed with SIGKILL (run/parent_death.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any

from packsft.errors import ConfigError, OutputError
from packsft.render.flat_ids import stand_in_for_awkward
from packsft.render.tokenizer import PackTokenizer, remember_fast
from packsft.run import parent_death
from packsft.run.executor import Executor, rerun_command
from packsft.run.fork_server import AUTO_WORKERS_MIN_BYTES, available_cpus, worker_context
from packsft.run.malloc import PREFAULT_PER_INPUT_BYTE, keep_freed_memory, prefault_heap
from packsft.run.outdir import OutDir
from packsft.run.plan import Plan, Unit
from packsft.run.unit import UnitJob, input_rows, load_job_tokenizer, write_unit


@dataclass(frozen=True)
class LocalExecutor(Executor):
    """The units in `workers` processes on this machine (0: auto_workers), largest first; a progress bar over
    records. SIGTERM and Ctrl-C stop the run cleanly (run/pipeline.py); finished shards stay."""

    workers: int = 0
    name = "local"

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (auto) or more, got {self.workers}")

    def run(self, plan: Plan, units: list[Unit], job: UnitJob, tokenizer: PackTokenizer, quiet: bool) -> None:
        fingerprints = [plan.fingerprints[unit.index] for unit in units]
        pack_units(units, fingerprints, job, tokenizer, self.workers or auto_workers(units), quiet)

    @classmethod
    def resume_hint(cls, out: OutDir, plan: Plan, settings: dict[str, Any], missing: list[int]) -> str:
        return rerun_command(["packsft", "pack"], out, plan, [])


def auto_workers(units: list[Unit]) -> int:
    """Workers for --workers 0: one process per available CPU (at most one per unit) for big inputs.

    Separate single-threaded tokenizers in processes overlap the Python stages of one unit with the
    tokenizing of another: on 8 ShareGPT files with GPT-2 on a 2-core machine, bestfit packs in 5.3 s
    with the default 2 workers against 9.3 s with --workers 1 (BENCHMARKS.md).
    """
    if sum(unit.bytes for unit in units) < AUTO_WORKERS_MIN_BYTES:
        return 1
    return max(1, min(available_cpus(), len(units)))


def threads_per_worker(workers: int) -> int:
    return max(1, math.floor(available_cpus() / workers))


_worker_tokenizer: PackTokenizer | None = None


def _init_worker(job: UnitJob, threads: int, prefault: int = 0) -> None:
    """A pool worker as it starts; `prefault`: the heap bytes its first unit will likely take (run/malloc.py)."""
    global _worker_tokenizer
    if parent_death.fork_server_pid is not None:  # forked by a fork server that dies with the parent
        parent_death.die_with_parent(parent_death.fork_server_pid)
    parent_death.exit_with_parent_process()
    keep_freed_memory()
    prefault_heap(prefault)
    stand_in_for_awkward()
    # Must happen before the tokenizer's thread pool starts (at its first encode).
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    # The parent decides when to stop; a Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The parent proved the fast encoder for this tokenizer fingerprint (checked below): no second proof.
    _worker_tokenizer = load_job_tokenizer(job, threads, prove=False)


def _work(job: UnitJob, unit: Unit, fingerprint: str) -> int:

    assert _worker_tokenizer is not None  # set by _init_worker
    written = write_unit(unit, fingerprint, job, _worker_tokenizer)
    return input_rows(written)


def pack_units(
    units: list[Unit], fingerprints: list[str], job: UnitJob, tokenizer: PackTokenizer, workers: int, quiet: bool
) -> None:
    """Pack and write every unit; with workers > 1 in a process pool, largest units first."""

    total = sum(unit.total_rows for unit in units)
    # No tqdm at all when quiet: even a disabled bar takes tqdm's process-shared lock, which a process
    # killed while holding it (SIGKILL of a forked packer) leaves locked for every other.
    if quiet or not units:
        bar: Any = contextlib.nullcontext()
    else:
        from tqdm import tqdm  # here: workers, and the fork server they start from, never import it (25 ms)

        bar = tqdm(total=total, unit="conv", desc="packing", dynamic_ncols=True)
    with bar as progress:
        if workers == 1 or len(units) <= 1:
            for unit, fingerprint in zip(units, fingerprints):
                write_unit(unit, fingerprint, job, tokenizer, progress=progress)
            return
        workers = min(workers, len(units))
        renders_chat = job.config.template == "chat" and not job.store_only  # a repack renders nothing
        remember_fast(job.config.tokenizer, tokenizer)  # the next pack's fork server builds its gigatoken
        # A worker's heap, faulted in as it starts (run/malloc.py); in one process (--workers 1) it measured no faster.
        prefault = PREFAULT_PER_INPUT_BYTE * max(unit.bytes for unit in units)
        pool = ProcessPoolExecutor(workers, mp_context=worker_context(chat=renders_chat), initializer=_init_worker,
                                   initargs=(replace(job, tokenizer_state=tokenizer.state()), threads_per_worker(workers),
                                             prefault))
        try:
            order = sorted(range(len(units)), key=lambda i: (-units[i].bytes, units[i].index))
            # as_completed waits on all futures at once: wait(FIRST_COMPLETED) in a loop re-arms every
            # pending future per completion, quadratic in the number of units (10,000 small files).
            for future in as_completed([pool.submit(_work, job, units[i], fingerprints[i]) for i in order]):
                rows = future.result()  # re-raises a worker's error here
                if progress is not None:
                    progress.update(rows)
        except BrokenProcessPool:
            raise OutputError(
                "a worker process died (out of memory?); completed units are kept. Rerun to resume, "
                "with fewer --workers or a smaller --unit-mib"
            ) from None
        except BaseException:
            _kill(pool)
            raise
        pool.shutdown()


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now: their half-written shards are removed by the next run."""
    for process in list((pool._processes or {}).values()):  # no public API kills a pool's workers
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)
