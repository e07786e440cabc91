"""glibc's heap kept from handing a CPU run's freed activation buffers back to the kernel.

torch's CPU allocator is plain malloc. glibc serves an allocation above M_MMAP_THRESHOLD (which grows
with use, to 32 MB at most) with a fresh mmap, and trims the heap's free top back to the kernel past
M_TRIM_THRESHOLD, so a batch's multi-megabyte activations are page-faulted and zeroed again layer after
layer: scoring 100 Science Exam rows in bf16 took 450k-1.3M minor page faults and 0.9-2.8 s of system
time (8 processes, one 100-row run each after a warm-up). With both thresholds raised the freed
buffers are reused: 4-13k faults and 0.04-0.15 s (8 processes alternating with those). This is what
PyTorch's CPU tuning guide gets from preloading jemalloc or tcmalloc, with glibc's own `mallopt`.

It is process-wide and stays set: up to TRIM of free heap is kept rather than returned, and an
allocation above MMAP still gets its own mapping. A glibc that refuses an mmap threshold above 32 MB
(older releases cap it at HEAP_MAX_SIZE / 2; 2.36 here takes 1 GB) gets 32 MB, which still covers a
batch's activations. Linux glibc only; elsewhere, and with KAGGLE_KIT_KEEP_HEAP=0, nothing changes.

Training, which does not keep the heap, hands its free gaps back when they have grown instead
(`HeapWatch`, `release_heap`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("kaggle_kit")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
MMAP = 64 << 20  # a batch's activations are 1-15 MB; full-vocabulary logits (perplexity) stay mapped
MMAP_CAPPED = 32 << 20  # the most an older glibc's mallopt accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM = 512 << 20


@functools.cache
def _glibc():
    """This process's C library when it is glibc on Linux (musl's mallopt takes other options), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError as e:
        log.debug("no C library: %s", e)
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@functools.cache
def keep_heap() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are set."""
    libc = _glibc()
    if os.environ.get("KAGGLE_KIT_KEEP_HEAP", "1") == "0" or libc is None:
        return False
    try:
        return set_thresholds(libc)
    except AttributeError as e:
        log.debug("mallopt unavailable: %s", e)
        return False


def release_heap() -> bool:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim): a long CPU training run frees
    and reallocates its activations every step, and the free gaps glibc keeps grow with the run (RSS
    +0.8 GB in 120 steps on SmolLM2 while live memory stays flat: HeapWatch). True when it ran."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def set_thresholds(libc) -> bool:
    """Both thresholds through `libc.mallopt`, each on its own: a refused mmap threshold is tried again
    at MMAP_CAPPED, and the trim threshold is set either way. True when both are set."""
    mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP) or libc.mallopt(M_MMAP_THRESHOLD, MMAP_CAPPED)
    trim = libc.mallopt(M_TRIM_THRESHOLD, TRIM)
    if not (mmap and trim):
        log.debug("mallopt refused: mmap threshold %s, trim threshold %s", bool(mmap), bool(trim))
    return bool(mmap and trim)


def rss_mb() -> float:
    """This process's resident memory in MB (/proc/self/statm; 0.0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The most resident memory this process has held, in MB (Linux's ru_maxrss is in KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class HeapWatch:
    """Hands the heap's free pages back when a CPU training run's resident memory at a step's end has
    grown by `growth` (a fraction) past its working set, the process's peak RSS by the end of its first
    `settle` steps (an epoch starts with its largest batch): RSS stays within (1 + growth) x that. What
    grows past it is glibc's free gaps (SmolLM2, 2 x 512 tokens: RSS 3,108 MB after 120 steps with live
    memory at 1.0-1.2 GB), and each trim costs the next steps their page faults again, so the bound is
    loose: in 120 steps of 2 x 512 tokens (bench/heap_bench.py, docs/training.md) bounds of 1.5x
    trimmed 12-22 times, 4-14% slower a step than never, and +256 MB 31-37 times, 8-17% slower."""

    def __init__(self, growth: float = 1.0, settle: int = 2):
        self.growth, self.settle = growth, settle
        self.steps, self.mark, self.released = 0, 0.0, 0

    def step_end(self) -> bool:
        """Call after each optimizer step; True when it handed the heap back."""
        self.steps += 1
        if self.steps <= self.settle:
            self.mark = peak_rss_mb()
            return False
        if rss_mb() <= self.mark * (1 + self.growth) or not release_heap():
            return False
        self.released += 1
        return True
