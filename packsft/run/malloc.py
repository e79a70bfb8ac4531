"""Keep memory a unit freed for the next, instead of handing it back to the kernel and faulting it in again.

A unit allocates arrays of tens of MiB (a unit's tokens, flags, offsets, and numpy's temporaries) and frees them.
glibc's malloc returns free memory at the top of its heap to the kernel once 128 KiB of it are free (its trim
threshold), and serves blocks above its mmap threshold (which adapts up to 32 MiB) with fresh mappings; every page
of the next such block is then a page fault again. On 8 ShareGPT units in one process (GPT-2): 92k page faults and
1.1-1.4 s of system time, against 52k and 0.56-0.69 s with the two thresholds below (peak RSS 413 -> 431 MiB).

A pool worker also grows its heap as it starts by what its first unit will likely take, faulted in at once by the
kernel (`prefault_heap`): its first unit then faults nothing in, where it took a page fault per page.

Only for processes packsft owns (the `pack` and `repack` commands, local workers, Ray tasks): a library user's
process keeps its allocator as it is. Where malloc is not glibc's (macOS, musl), nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools
import mmap

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (glibc's own upper bound for the threshold on 64-bit), and up to this
# much free memory stays at its top: a bound on what is kept, not an allocation.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20


# A worker's first unit faults in the memory its arrays take, one page at a time: ~130 MiB for a ShareGPT shard with
# GPT-2, about 35 bytes per byte of compressed parquet. `prefault_heap` grows the heap by that much at once as the
# worker starts (at most PREFAULT_MAX_BYTES, kept by TRIM_THRESHOLD once freed; in PREFAULT_BLOCK_BYTES blocks, which
# come from the heap, below MMAP_THRESHOLD).
PREFAULT_PER_INPUT_BYTE = 32
PREFAULT_MAX_BYTES = 120 << 20
PREFAULT_BLOCK_BYTES = 15 << 20
MADV_POPULATE_WRITE = 23  # Linux 5.14 and later (an older kernel refuses it: nothing is faulted in then)


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


def freed_memory_kept() -> bool:
    """Whether this process set its thresholds (keep_freed_memory), without setting them: a library user's process
    keeps its allocator as it is."""
    return keep_freed_memory.cache_info().currsize > 0 and keep_freed_memory()


def prefault_heap(size: int) -> bool:
    """Grow the heap by `size` bytes (at most PREFAULT_MAX_BYTES), faulted in by the kernel in one call per block
    (MADV_POPULATE_WRITE), then freed for the unit's arrays to reuse: where the first unit faulted them in page by page.
    On this 2-core VM, 120 MiB took 45-65 ms so against 82-117 ms page by page (a page fault cost ~13 us: a GPT-2
    worker's first ShareGPT unit spent 0.27-0.39 s in the kernel on 24k of them, 0.04-0.05 s after this). Only where
    this process set keep_freed_memory's thresholds (the freed blocks stay in the heap); False where nothing was
    faulted in."""
    size = min(size, PREFAULT_MAX_BYTES)
    if size < PREFAULT_BLOCK_BYTES or not freed_memory_kept():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    malloc, free, madvise = libc.malloc, libc.free, libc.madvise
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    madvise.restype, madvise.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    blocks = [malloc(PREFAULT_BLOCK_BYTES) for _ in range(size // PREFAULT_BLOCK_BYTES)]
    populated = True
    for block in blocks:
        if block:
            start = -(-block // page) * page  # the block's first whole page
            populated &= madvise(start, (block + PREFAULT_BLOCK_BYTES - start) // page * page, MADV_POPULATE_WRITE) == 0
    for block in reversed(blocks):
        free(block)
    return populated and all(blocks)
