"""Keep freed tensor memory in the process heap between force calls.

Every energy+forces call allocates and frees the same few MB of tensors. With glibc's
defaults the freed top of the heap goes back to the kernel (``brk`` shrinks) and the next call
faults every page in again, zeroed. With an AOTInductor package on a 64-water box on one core
that cost about 30 % of the MD run time, all of it in the kernel (docs/benchmarks.md, "Heap trimming"). Raising malloc's
trim threshold keeps the pages resident. The LAMMPS plugin does the same in C++
(lammps_plugin/allscaip_heap.cpp).
"""

from __future__ import annotations

import ctypes
import os

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 1 << 30  # free heap top kept before trimming
# only allocations above 1 GiB get a mapping of their own: at 32 MiB (glibc's largest dynamic
# threshold) every larger tensor of a 768-atom call was mapped, freed to the kernel and faulted
# in again by the next call (bf16 blocks, compiled attention: 2.41 -> 2.33-2.36 s per call at 1 GiB)
MMAP_THRESHOLD_BYTES = 1 << 30

_applied = False


def keep_heap_resident() -> str:
    """Apply the malloc settings once per process; return what was done, for a log line.

    Does nothing when the C library is not glibc, when ``MALLOC_TRIM_THRESHOLD_`` or
    ``MALLOC_MMAP_THRESHOLD_`` are set (the user's choice wins), or when
    ``ALLSCAIP_MALLOC_TUNING=0``.
    """
    global _applied
    if _applied:
        return "already applied in this process"
    if os.environ.get("ALLSCAIP_MALLOC_TUNING") == "0":
        return "off (ALLSCAIP_MALLOC_TUNING=0)"
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return "left to the MALLOC_*_THRESHOLD_ environment variables"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        _ = libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        return "not glibc; allocator left as it is"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1 or mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        return "mallopt refused the settings"
    _applied = True
    return "glibc malloc keeps up to 1 GiB of freed heap (set ALLSCAIP_MALLOC_TUNING=0 to turn off)"
