"""Bounding the archiving process's memory where Python leaves it to the C allocator (glibc).

Transfers churn through MiB-sized buffers in several threads (read-ahead, boto3's part
uploads, paramiko's transport). With glibc's defaults that memory is kept after it is freed:
each thread gets its own malloc arena (up to 8 per core), and the mmap threshold rises to the
largest block freed so far (up to 32 MiB), so big buffers end up in arenas instead of being
returned to the system. Peak RSS of a 256 MiB upload, measured (BENCHMARKS.md): S3 204 ->
180 MiB with two arenas; GCS 207 -> ~190 MiB with the mmap threshold fixed at 4 MiB as well
(512 KiB went a little lower but made SFTP 25-40% slower: every 1 MiB buffer was mapped and
unmapped). Explicit ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` environment variables win.
Applied once, when ``flows`` is imported: by the CLI before it starts a run, and by workers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 4 * 1024 * 1024  # blocks from here up are mapped and unmapped: freed = returned


def tune_malloc() -> bool:
    """Apply the bounds to this process (call early, before threads start); True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # glibc's soname first: ctypes.util.find_library runs ldconfig (a child process, forked
        # from this one) to find it
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, TypeError, AttributeError):  # not glibc (musl has neither knob)
        return False
    done = False
    if "MALLOC_ARENA_MAX" not in os.environ:
        done = bool(mallopt(M_ARENA_MAX, ARENAS)) or done
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) or done
    return done
