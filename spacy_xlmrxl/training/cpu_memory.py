"""CPU training: keep freed memory in the process instead of handing it back to the kernel.

Owns ``spacy-xlmrxl.keep_freed_memory.v1``, a callback for ``[initialize] before_init``.

Why: a training step frees and reallocates the same large buffers every time (above all the
dense gradient of the word-embedding matrix, vocabulary x hidden floats). glibc serves large
blocks with ``mmap`` and unmaps them when freed, so each step page-faults the whole buffer in
again (zero-filled by the kernel); README gives the measured page faults and system time with
and without this callback. The cost: the process keeps its peak heap (it does not shrink after a
large step), which is what a training process wants anyway.

It calls glibc's ``mallopt(M_MMAP_MAX, 0)`` (no mmap for large blocks: they come from the heap
and are reused) and ``mallopt(M_TRIM_THRESHOLD, ...)`` (never trim the heap top). Same as
starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. On other C
libraries (macOS, musl, Windows) it does nothing. GPU memory is not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from typing import Any, Callable

from spacy.util import registry

logger = logging.getLogger(__name__)
_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for repeated large allocations; True when it was applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.info("keep_freed_memory: not glibc (%s), nothing changed", platform.libc_ver()[0] or platform.system())
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    logger.info("keep_freed_memory: glibc mallopt %s", "applied" if applied else "refused")
    return applied


@registry.callbacks("spacy-xlmrxl.keep_freed_memory.v1")
def make_keep_freed_memory() -> Callable[[Any], Any]:
    """``[initialize.before_init]`` callback: `keep_freed_memory` before training starts."""

    def before_init(nlp: Any) -> Any:
        keep_freed_memory()
        return nlp

    return before_init
