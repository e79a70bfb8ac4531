"""Keep memory a unit freed for the next, instead of handing it back to the kernel and faulting it in again.

A unit allocates arrays of tens of MiB (a unit's tokens, flags, offsets, and numpy's temporaries) and frees them.
glibc's malloc returns free memory at the top of its heap to the kernel once 128 KiB of it are free (its trim
threshold), and serves blocks above its mmap threshold (which adapts up to 32 MiB) with fresh mappings; every page
of the next such block is then a page fault again. On 8 ShareGPT units in one process (GPT-2): 92k page faults and
1.1-1.4 s of system time, against 52k and 0.56-0.69 s with the two thresholds below (peak RSS 413 -> 431 MiB).

Only for processes packsft owns (the `pack` and `repack` commands, local workers, Ray tasks): a library user's
process keeps its allocator as it is. Where malloc is not glibc's (macOS, musl), nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (glibc's own upper bound for the threshold on 64-bit), and up to this
# much free memory stays at its top: a bound on what is kept, not an allocation.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds (once); False where its malloc takes no such setting."""
    # The symbols this process already has (libc's among them), not ctypes.util.find_library("c"): that runs
    # `ldconfig -p` in a child process (10 ms), in every worker.
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # glibc only (other libcs' mallopt parameters mean other things).
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    # Setting either turns off glibc's adaptive mmap threshold, so both are set.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
