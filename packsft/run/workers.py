"""Run units in this process or in a pool of worker processes; stop cleanly on SIGTERM/SIGINT.

    parent: plan, tokenizer fingerprint, progress bar          (holds no unit data)
      |-- worker 1: RAYON_NUM_THREADS = cpus / workers, own tokenizer, one unit at a time -> shard
      |-- worker 2: ...

Each worker packs whole units and writes their shards itself, so only a unit's row count travels
back; the parent's memory does not grow with the number of units. The tokenizer's Rust thread pool
is sized before the tokenizer loads in each worker (forked from a clean fork server), so N workers
share the cores instead of each starting one thread per core. A unit's bytes do not depend on the
thread count, so any number of workers writes the same output.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from tqdm import tqdm

from packsft.config import PackConfig
from packsft.errors import OutputError, PackInterrupted
from packsft.render.chat_proof import with_chat_path_proven
from packsft.render.tokenizer import PackTokenizer, load_tokenizer, tokenizer_from_state
from packsft.run.outdir import Plan, incomplete_units, resume_hint
from packsft.run.plan import Unit, threads_per_worker
from packsft.run.unit import records_read, write_unit

# Imported once by the fork server, so that each worker starts in well under a second. Workers rebuild
# the parent's tokenizer from its state (tokenizers only). For chat templates, transformers' jinja renderer
# is preloaded too (~1.5 s to import; not its tokenizer classes, which import torch: seconds more).
PRELOAD = ("packsft.run.pipeline", "tokenizers", "tiktoken", "tiktoken.core")
PRELOAD_CHAT = ("transformers.utils.chat_template_utils", "jinja2.sandbox")


@dataclass(frozen=True)
class UnitJob:
    """What a worker needs besides the unit (picklable).

    `tokenizer_state` (PackTokenizer.state()) is the parent's tokenizer, attached for local workers only:
    megabytes that a remote runner would ship with every task.
    """

    out_dir: Path
    config: PackConfig
    strict: bool
    tokenizer_fingerprint: str
    skip_bad_files: bool = False
    tokenizer_state: dict[str, Any] | None = None


_worker_tokenizer: PackTokenizer | None = None


def _init_worker(job: UnitJob, threads: int) -> None:
    global _worker_tokenizer
    # Must happen before the tokenizer's thread pool starts (at its first encode).
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    # The parent decides when to stop; a Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The parent proved the fast encoder for this tokenizer fingerprint (checked below): no second proof.
    _worker_tokenizer = load_job_tokenizer(job, threads, prove=False)


def load_job_tokenizer(job: UnitJob, threads: int, *, prove: bool) -> PackTokenizer:
    """The job's tokenizer, loaded in a worker; refused when it is not the one the plan fingerprinted.

    A local worker rebuilds the parent's own tokenizer from `job.tokenizer_state` (no transformers, no
    second proof); elsewhere it is loaded (from this machine's tokenizer cache where it is warm).

    Args:
        prove: compare the fast encoder with HF again, where the parent's proof does not carry over
            (a worker on another machine may have other library versions).
    """
    config = job.config
    if job.tokenizer_state is not None:
        tokenizer = tokenizer_from_state(job.tokenizer_state, config.tokenizer, encoder=config.encoder,
                                         trust_remote_code=config.trust_remote_code, threads=threads)
    else:
        tokenizer = load_tokenizer(config.tokenizer, config.template, trust_remote_code=config.trust_remote_code,
                                   encoder=config.encoder, prove=prove, threads=threads)
        if prove:
            tokenizer = with_chat_path_proven(tokenizer)
    if tokenizer.fingerprint != job.tokenizer_fingerprint:
        raise OutputError(f"tokenizer {config.tokenizer!r} changed while packing; rerun to resume")
    return tokenizer


def _work(job: UnitJob, unit: Unit, fingerprint: str) -> int:

    assert _worker_tokenizer is not None  # set by _init_worker
    written = write_unit(unit, fingerprint, job.out_dir, job.config, _worker_tokenizer, strict=job.strict,
                         skip_bad_files=job.skip_bad_files)
    return records_read(written)


def pack_units(
    units: list[Unit], fingerprints: list[str], job: UnitJob, tokenizer: PackTokenizer, workers: int, quiet: bool
) -> None:
    """Pack and write every unit; with workers > 1 in a process pool, largest units first."""

    total = sum(unit.total_rows for unit in units)
    # No tqdm at all when quiet: even a disabled bar takes tqdm's process-shared lock, which a process
    # killed while holding it (SIGKILL of a forked packer) leaves locked for every other.
    bar = contextlib.nullcontext() if quiet or not units else tqdm(total=total, unit="conv", desc="packing",
                                                                      dynamic_ncols=True)
    with bar as progress:
        if workers == 1 or len(units) <= 1:
            for unit, fingerprint in zip(units, fingerprints):
                write_unit(unit, fingerprint, job.out_dir, job.config, tokenizer, strict=job.strict,
                           skip_bad_files=job.skip_bad_files, progress=progress)
            return
        workers = min(workers, len(units))
        pool = ProcessPoolExecutor(workers, mp_context=_worker_context(job.config.template), initializer=_init_worker,
                                   initargs=(replace(job, tokenizer_state=tokenizer.state()), threads_per_worker(workers)))
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


def _worker_context(template: str) -> BaseContext:
    """Workers fork from a clean server process that imported the tokenizer code once (fast starts,
    and no inherited tokenizer thread pool); spawned where there is no fork server."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD + (PRELOAD_CHAT if template == "chat" else ())))
    return context


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now: their half-written shards are removed by the next run."""
    for process in list((pool._processes or {}).values()):  # no public API kills a pool's workers
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def stop_on_signals(out_dir: Path, plan: Plan) -> Iterator[None]:
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

        missing = incomplete_units(out_dir, plan)
        how = resume_hint(out_dir, plan, missing) if missing else f"packsft merge {shlex.quote(str(out_dir))}"
        raise PackInterrupted(
            f"stopped by {stop.args[0] if stop.args else 'SIGINT'}: {len(plan.units) - len(missing)} of "
            f"{len(plan.units)} units are complete and kept. Rerun the same command to resume ({how})"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
