"""Workers die with their parent: `kill -9` of `packsft pack` leaves no fork server or worker behind, and a rerun
resumes what was written (run/parent_death.py).

Data: the demo conversations repeated into 8 parquet files (one unit each, about a second of packing each on 2
cores), packed by `python -m packsft pack --workers 2` in a child process with the demo tokenizer.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packsft import PackConfig
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.run import run_pack
from packsft.run.parent_death import EXIT_ORPHANED, die_with_parent
from tests.helpers import assert_output_verifies

FILES, REPEATS = 8, 5  # 600 conversations per file
GONE_WITHIN_S = 10


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    table = pq.read_table(next(Path(DEMO_DATA).glob("*.parquet")), columns=["messages", "source"])
    folder = tmp_path_factory.mktemp("data")
    for index in range(FILES):
        pq.write_table(pa.concat_tables([table] * REPEATS), folder / f"part-{index}.parquet")
    return folder


def complete_shards(out: Path) -> list[str]:
    """Shard folders renamed into place (a unit written); half-written ones start with a dot."""
    shards = out / "shards"
    return sorted(p.name for p in shards.iterdir() if p.name.isdigit()) if shards.is_dir() else []


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie is dead: the container's init may never reap it)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a process tree the Linux way")
def test_kill_9_of_pack_leaves_no_worker_and_a_rerun_resumes(tmp_path, data_dir, demo_tokenizer_dir):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "packsft", "pack", str(data_dir), str(out), "--tokenizer", str(demo_tokenizer_dir),
               "--seq-length", "256", "--workers", "2", "--quiet"]
    pack = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not complete_shards(out) and pack.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pack.poll() is None, "the pack finished before a unit was written: give it more data"
    descendants = psutil.Process(pack.pid).children(recursive=True)  # resource tracker, fork server, 2 workers
    assert len(descendants) >= 3
    pack.send_signal(signal.SIGKILL)
    pack.wait()

    deadline = time.monotonic() + GONE_WITHIN_S
    while running(descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p.cmdline() for p in running(descendants)] == []
    written = complete_shards(out)
    assert 1 <= len(written) < FILES and not (out / "dataset.json").exists()

    resumed = run_pack(data_dir, out, PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256), quiet=True,
                       workers=2)
    assert resumed.skipped == len(written) and resumed.packed == FILES - len(written)
    assert resumed.dataset is not None
    assert_output_verifies(out)


def _orphan_check(parent: int) -> None:
    die_with_parent(parent)
    os._exit(0)


def test_a_process_whose_parent_is_already_gone_exits_at_once():
    """The race closed: a parent that died before the death signal was set sends none, so the check exits."""
    fork = multiprocessing.get_context("fork")
    alive = fork.Process(target=_orphan_check, args=(os.getpid(),))
    alive.start()
    alive.join()
    orphan = fork.Process(target=_orphan_check, args=(os.getpid() + 1_000_000,))  # not its parent: as if it died
    orphan.start()
    orphan.join()
    assert (alive.exitcode, orphan.exitcode) == (0, EXIT_ORPHANED)
