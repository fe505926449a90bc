"""Keep memory that PyTorch frees inside the process, so a CPU synthesis step reuses it.

glibc's malloc serves a large block (above a threshold that adapts up to 32 MiB) with a fresh
``mmap`` and gives it back to the system on ``free``; it also trims the top of its heap once the
free space there passes a threshold. A synthesis step on a CPU allocates and frees feature maps
of tens to hundreds of MiB (16 images x 64 channels x 224^2 floats = 205 MiB) every step, so every
step page-faulted and zeroed them again (measured in docs/pipeline.md). PyTorch's CPU tuning guide recommends jemalloc or
tcmalloc through ``LD_PRELOAD`` for the same reason; this does the part that matters here from
inside the process, with no system package, on glibc only (elsewhere it does nothing).

The cost: the process keeps its peak heap (what a dedicated synthesis worker uses anyway).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, which is never trimmed below this much free space.
RETAIN_BYTES = 1 << 30

_retained = False


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to RETAIN_BYTES, once per process.

    True when they are (now or already) raised; False where the C library is not glibc or
    refuses. Calling it again does nothing.
    """
    global _retained
    if _retained:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    # mallopt returns 1 on success, 0 on error; setting either also stops their adaptation.
    _retained = bool(
        libc.mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)
        and libc.mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES)
    )
    return _retained
