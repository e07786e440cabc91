"""The budget planner: measure throughput on a few real batches, predict the whole run, fit max_length.

Cost model: a batch costs padded_tokens x s(L) seconds, where s(L) is the measured seconds per padded
token for rows of length L (linear between measured lengths, flat beyond them). Attention makes s grow
with L, which is why one number per length bucket beats one global rate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .engine import padded_tokens, plan_batches

log = logging.getLogger("kaggle_kit")


@dataclass
class Throughput:
    """Measured seconds per padded token at some row lengths (sorted by length)."""

    lengths: list[int]
    sec_per_token: list[float]

    def at(self, length: int) -> float:
        """Seconds per padded token for rows of `length` tokens."""
        return float(np.interp(length, self.lengths, self.sec_per_token))


def measure(step, lengths: list[int], batch_tokens: int, n_buckets: int = 3, steps: int = 1) -> Throughput:
    """Time one planned batch from each of `n_buckets` length buckets (longest, middle, shortest).

    `step(batch_indices)` runs a batch (results are thrown away). The first call also warms up.
    `steps` (here and below): the forwards a batch makes, as plan_batches takes it.
    """
    batches = plan_batches(lengths, batch_tokens, steps=steps)
    picks = sorted({int(round(x)) for x in np.linspace(0, len(batches) - 1, n_buckets)})
    step(batches[picks[-1]][:1])  # warm-up: allocator, kernels, caches
    points = []
    for k in picks:
        batch = batches[k]
        t0 = time.perf_counter()
        step(batch)
        took = time.perf_counter() - t0
        points.append((max(lengths[i] for i in batch), took / padded_tokens(batch, lengths)))
    points.sort()
    return Throughput([p[0] for p in points], [p[1] for p in points])


def worth_planning(lengths: list[int], batch_tokens: int, n_buckets: int = 3, steps: int = 1) -> bool:
    """Whether the run is large enough to plan: more than twice the batches `measure` times. A smaller
    one (Kaggle's three public test rows) would spend half its time or more being timed, and its deadline
    still guards it: rows it does not reach keep the fallback."""
    return len(plan_batches(lengths, batch_tokens, steps=steps)) > 2 * n_buckets


def predict_seconds(lengths: list[int], batch_tokens: int, tp: Throughput, steps: int = 1) -> float:
    """Predicted seconds for all rows of `lengths` under the plan and the measured throughput."""
    total = 0.0
    for batch in plan_batches(lengths, batch_tokens, steps=steps):
        longest = max(lengths[i] for i in batch)
        total += longest * len(batch) * tp.at(longest)
    return total


def fit_max_length(
    lengths: list[int],
    batch_tokens: int,
    tp: Throughput,
    seconds: float,
    max_length: int,
    floor: int = 256,
    steps: int = 1,
) -> tuple[int, float]:
    """The largest max_length (steps of 10%, not below `floor`) whose predicted run fits `seconds`.

    Returns (max_length, predicted seconds); if even `floor` does not fit, (floor, its prediction):
    the deadline then leaves the rest to the fallback.
    """
    length = max_length
    while True:
        clipped = [min(n, length) for n in lengths]
        need = predict_seconds(clipped, batch_tokens, tp, steps)
        if need <= seconds or length <= floor:
            return length, need
        length = max(floor, int(length * 0.9))


def tile_lengths(lengths: list[int], rows: int, seed: int = 0) -> list[int]:
    """`rows` lengths drawn with replacement from the observed ones (a hidden test of that size)."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.choice(np.asarray(lengths), size=rows, replace=True)]
