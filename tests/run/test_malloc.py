"""run/malloc.py: a process packsft owns keeps the memory a unit freed, so the next unit's arrays do not fault
their pages in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from packsft.run.malloc import keep_freed_memory

# 20 rounds of an array made and freed, each a MiB bigger than the last, up to 24 MiB (as units' token arrays and
# numpy's temporaries come and go); the page faults they took.
ROUNDS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from packsft.run.malloc import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for size in range(5, 25):
    block = np.ones(size << 20, np.uint8)
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    return int(subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                              check=True).stdout)


def test_freed_blocks_are_reused_without_page_faults():
    if not sys.platform.startswith("linux") or not keep_freed_memory():
        pytest.skip("malloc here is not glibc's: packsft leaves it as it is")
    pages = (24 << 20) // 4096  # of the biggest array
    default, kept = _faults("default"), _faults("keep")
    assert kept < 2 * pages, kept  # the heap grew to the biggest array once and served every round from it
    assert default > 1.5 * kept, (default, kept)  # glibc's own thresholds mapped rounds' arrays afresh (here ~2.5x)
