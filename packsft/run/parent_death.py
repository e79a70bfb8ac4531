"""Worker processes die with the `packsft pack` that started them, even when it is killed (SIGKILL, the OOM killer).

    packsft pack (pid P)  --spawns-->  fork server  --forks-->  worker 1, worker 2, ...
                                       dies with P              die with the fork server (Linux),
                                       (Linux)                  and exit when P's sentinel closes (everywhere)

Nothing else tells a pool's workers that the parent is gone: they ignore SIGTERM and SIGINT (the parent
decides when to stop), finish the units already queued to them and then wait on the pool's queue forever,
and the fork server waits for them. On Linux the kernel sends SIGKILL down the chain (PR_SET_PDEATHSIG): to
the fork server when P exits, to each worker when the fork server does. Each process sets it after it started,
so each checks its parent pid afterwards: a parent that died in between sends nothing. Everywhere else (and
as a second line on Linux, where a fork server packsft did not start may serve the pool), each worker runs a
thread that waits on multiprocessing's sentinel of P and exits the worker when it closes. A killed worker leaves
a half-written shard folder that the next run removes. Linux sends the signal when the thread that started the
process ends: a fork server started from a thread of P that ends before P dies then, and multiprocessing starts
a new one for the next pool.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait

# The pid of the process that starts the fork server, in the fork server's environment: the fork server imports
# this module (fork_server.PRELOAD) and so learns whom to die with. Removed from the environment again in both.
FORK_SERVER_PARENT_ENV = "PACKSFT_FORK_SERVER_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_ORPHANED = 1

# Set in a fork server started under fork_server_parent(): its own pid, which its forked workers inherit.
fork_server_pid: int | None = None


def die_with_parent(parent: int) -> None:
    """Have Linux SIGKILL this process when its parent exits, and exit now if `parent` is no longer its parent
    (it died before the signal was set). Elsewhere only the check."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)


def exit_with_parent_process() -> None:
    """Exit this process (a multiprocessing child) as soon as the process that started it exits: a daemon thread
    waits on the parent's sentinel, which closes when the parent dies however it dies."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    threading.Thread(target=_exit_when_ready, args=(parent.sentinel,), name="packsft-parent-watch",
                     daemon=True).start()


def _exit_when_ready(sentinel: int) -> None:
    wait([sentinel])
    os._exit(EXIT_ORPHANED)


@contextmanager
def fork_server_parent() -> Iterator[None]:
    """While held, a fork server this process starts dies with it (the environment names this process)."""
    os.environ[FORK_SERVER_PARENT_ENV] = str(os.getpid())
    try:
        yield
    finally:
        os.environ.pop(FORK_SERVER_PARENT_ENV, None)


def _guard_fork_server() -> None:
    """In a fork server started under fork_server_parent(): die with that process (its parent)."""
    global fork_server_pid
    parent = os.environ.pop(FORK_SERVER_PARENT_ENV, "")
    if not parent.isdigit():
        return
    die_with_parent(int(parent))
    fork_server_pid = os.getpid()


_guard_fork_server()
