"""run/malloc.py: a process packsft owns keeps the memory a unit freed, so the next unit's arrays do not fault
their pages in again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from packsft.run.malloc import keep_freed_memory

# A 24 MiB array made and freed (as a unit's token arrays are), then another: the MiB of resident memory the first
# left behind, and the page faults the second took.
ROUNDS = """
import json, os, resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from packsft.run.malloc import keep_freed_memory
    assert keep_freed_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
block = np.ones(24 << 20, np.uint8)
del block
kept = (resident() - before) >> 20
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(24 << 20, np.uint8)
print(json.dumps([kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults]))
"""


def _rounds(mode: str) -> list[int]:
    return json.loads(subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                                     check=True).stdout)


def test_freed_blocks_are_reused_without_page_faults():
    if not sys.platform.startswith("linux") or not keep_freed_memory():
        pytest.skip("malloc here is not glibc's: packsft leaves it as it is")
    returned, _ = _rounds("default")
    kept, faults = _rounds("keep")
    assert returned < 4  # glibc's own thresholds hand a freed 24 MiB block back to the kernel
    assert kept >= 20 and faults < 64, (kept, faults)  # kept, the next block is served from it: no page faults


def test_setting_the_thresholds_starts_no_child_process(monkeypatch):
    """A worker sets them as it starts: no `ldconfig -p` child (ctypes.util.find_library's way of finding libc),
    which costs 10 ms a process and, under `ray submit`, is one more process titled like the Ray worker."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's thresholds are set on Linux only")

    def refuse(*args, **kwargs):
        raise AssertionError(f"a child process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert keep_freed_memory.__wrapped__() is keep_freed_memory()


# After the thresholds, a heap grown by prefault_heap(SIZE) (0: not grown), then a 24 MiB array made: whether it
# faulted anything in, and the page faults the array took.
PREFAULTED = """
import json, resource, sys
import numpy as np
from packsft.run.malloc import keep_freed_memory, prefault_heap
if sys.argv[2] == "keep":
    assert keep_freed_memory()
populated = prefault_heap(int(sys.argv[1]))
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(24 << 20, np.uint8)
print(json.dumps([populated, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults]))
"""


def test_a_prefaulted_heap_serves_the_first_arrays_without_page_faults():
    if not sys.platform.startswith("linux") or not keep_freed_memory():
        pytest.skip("malloc here is not glibc's: packsft leaves it as it is")

    def run(size: int, mode: str = "keep") -> list:
        return json.loads(subprocess.run([sys.executable, "-c", PREFAULTED, str(size), mode], capture_output=True,
                                         text=True, check=True).stdout)

    populated, faults = run(64 << 20)
    if not populated:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux 5.14+)")
    assert faults < 64, faults  # its pages were faulted in as the worker started
    populated, faults = run(0)
    assert not populated and faults > 256, faults  # without it, the 24 MiB fault in (6,144 pages; fewer where huge)
    # A process that did not set packsft's thresholds (a library user's) is left as it is: nothing is faulted in.
    populated, faults = run(64 << 20, "library")
    assert not populated and faults > 256, faults
