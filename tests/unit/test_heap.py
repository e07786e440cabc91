"""keep_heap (infer/fast/heap.py): freed buffers are reused, not page-faulted again; release_heap hands free gaps
back; each case in a fresh process (mallopt cannot be undone in this one)."""

import os
import subprocess
import sys

import pytest

from kaggle_kit.infer.fast import heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
HALF_AFRESH = 20 * (40 << 20) // 4096 // 2  # minor faults of half the 20 buffers below mapped afresh

CHURN = """
import resource, sys, torch
from kaggle_kit.infer.fast.heap import keep_heap
kept = keep_heap() if sys.argv[1] == "keep" else False
for _ in range(4):  # the heap grows to its working size first, not counted
    torch.empty(40 << 20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # 40 MB: above glibc's largest default mmap threshold (32 MB), below keep_heap's
    torch.empty(40 << 20, dtype=torch.uint8).fill_(1)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    kept, faults = out.stdout.split()
    return kept, int(faults)


def test_kept_heap_reuses_freed_buffers_instead_of_faulting_them_in_again():
    kept, with_keep = churn("keep")
    plain_kept, plain = churn("plain")
    assert (kept, plain_kept) == ("True", "False")
    assert plain > HALF_AFRESH  # every 40 MB buffer mapped and faulted in afresh
    assert with_keep < plain / 5  # a buffer or two may still be mapped afresh; 20 of 20 without


def test_the_opt_out_leaves_malloc_alone():
    kept, faults = churn("keep", KAGGLE_KIT_KEEP_HEAP="0")
    assert kept == "False"
    assert faults > HALF_AFRESH


def test_loading_a_cpu_model_keeps_the_heap(monkeypatch):
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_model

    calls = []
    monkeypatch.setattr(heap, "keep_heap", lambda: calls.append("kept") or True)
    load_model("demo", detect("float32", "cpu"))
    assert calls == ["kept"]


class Glibc:
    """mallopt as a glibc that caps the mmap threshold at `cap` answers it (0 = refused)."""

    def __init__(self, cap: int):
        self.cap, self.set = cap, {}

    def mallopt(self, param: int, value: int) -> int:
        if param == heap.M_MMAP_THRESHOLD and value > self.cap:
            return 0
        self.set[param] = value
        return 1


def test_an_older_glibc_that_refuses_64_mb_gets_the_32_mb_threshold_and_the_trim_threshold_still():
    libc = Glibc(cap=32 << 20)
    assert heap.set_thresholds(libc)
    assert libc.set == {heap.M_MMAP_THRESHOLD: 32 << 20, heap.M_TRIM_THRESHOLD: heap.TRIM}


def test_a_glibc_refusing_any_mmap_threshold_keeps_the_trim_threshold_and_says_not_kept():
    libc = Glibc(cap=0)
    assert not heap.set_thresholds(libc)
    assert libc.set == {heap.M_TRIM_THRESHOLD: heap.TRIM}


GAPS = """
import ctypes, sys
from kaggle_kit.infer.fast.heap import release_heap
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 >> 20
blocks = []
for _ in range(2000):  # 100 KB blocks: below glibc's 128 KB mmap threshold, so in the heap
    blocks.append(libc.malloc(100 << 10))
    ctypes.memset(blocks[-1], 1, 100 << 10)
for b in blocks[::2]:  # every other one: 100 MB of gaps between blocks in use, none at the heap's top
    libc.free(b)
held = rss()
ran = release_heap() if sys.argv[1] == "release" else False
print(ran, held, rss())
"""


@pytest.mark.parametrize("mode", ["release", "plain"])
def test_release_heap_hands_the_free_gaps_of_the_heap_back_to_the_kernel(mode):
    out = subprocess.run([sys.executable, "-c", GAPS, mode], capture_output=True, text=True, check=True)
    ran, held, after = out.stdout.split()
    assert ran == str(mode == "release")
    if mode == "release":
        assert int(held) - int(after) > 80  # of the 100 MB freed
    else:
        assert int(held) - int(after) < 10  # glibc alone keeps the gaps resident


def test_heap_watch_hands_back_only_past_its_growth_over_the_working_set(monkeypatch):
    """The working set is the peak RSS by the end of the first steps; a step end past it x (1 + growth) is
    the free gaps grown, and only then is the heap handed back; the working set stays what the first steps
    took, so RSS after a trim has all the growth to regrow before the next."""
    from kaggle_kit.infer.fast import heap

    readings = iter([1300.0, 1500.0, 1501.0, 1100.0, 1400.0, 1499.0, 1600.0])
    peaks = iter([900.0, 1000.0])
    released = []
    monkeypatch.setattr(heap, "rss_mb", lambda: next(readings))
    monkeypatch.setattr(heap, "peak_rss_mb", lambda: next(peaks))
    monkeypatch.setattr(heap, "release_heap", lambda: released.append(1) or True)
    watch = heap.HeapWatch(growth=0.5, settle=2)
    got = [watch.step_end() for _ in range(9)]
    # settle, settle (peak 1,000), within, within, past 1,500: trim; within, within, within, past: trim
    assert got == [False, False, False, False, True, False, False, False, True]
    assert watch.released == 2 == len(released) and watch.mark == 1000.0


def test_rss_mb_reads_this_process():
    from kaggle_kit.infer.fast.heap import peak_rss_mb, rss_mb

    assert 10 < rss_mb() <= peak_rss_mb() + 1 < 100_000
