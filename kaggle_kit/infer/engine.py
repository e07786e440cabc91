"""The batched, time-budgeted engine under score_choices, generate and perplexity.

Rows are tokenised once, sorted by length (longest first, so an out-of-memory shows up on the first
batch), packed into batches under a token budget, and results are put back in input order. Before each
batch the Deadline is asked whether that batch still fits; rows never reached stay None and the caller
fills them with its fallback.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..budget import Deadline
from ..progress import bar

log = logging.getLogger("kaggle_kit")


@dataclass
class RunStats:
    """What one engine run did."""

    rows: int = 0
    rows_done: int = 0
    tokens: int = 0  # real tokens processed
    padded_tokens: int = 0  # tokens including left padding
    seconds: float = 0.0
    batches: int = 0
    stopped_by_deadline: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows_done / self.seconds if self.seconds else 0.0


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text; texts longer than max_length keep their END (the answer slot is there)."""
    ids = []
    bos = tokenizer.bos_token
    for text in texts:
        # Chat templates already put BOS in the text; add it only when the text lacks it.
        add = bool(bos) and not text.startswith(bos)
        row = tokenizer(text, add_special_tokens=add)["input_ids"]
        ids.append(row[-max_length:])
    return ids


def plan_batches(lengths: list[int], batch_tokens: int, max_rows: int = 256) -> list[list[int]]:
    """Indices grouped into batches, longest rows first, each with rows x longest <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and (new_longest * (len(current) + 1) > batch_tokens or len(current) >= max_rows):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def left_pad(rows: list[list[int]], pad_id: int, device):
    """(input_ids, attention_mask, position_ids) tensors for left-padded rows."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[j, width - len(r):] = 1
    # Explicit positions: a left-padded row's first real token is position 0, as it was in training.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def run_batches(ids: list[list[int]], step: Callable[[list[int]], list], *, batch_tokens: int,
                deadline: Deadline | None = None, desc: str = "rows", progress: bool = True,
                extra_tokens: int = 0) -> tuple[list, RunStats]:
    """Call `step(batch_indices)` per batch under the deadline; results in input order, None if not reached.

    `extra_tokens` is added to every row's length when planning (generated tokens need room too).
    """
    deadline = deadline or Deadline(None)
    lengths = [len(r) + extra_tokens for r in ids]
    batches = plan_batches(lengths, batch_tokens)
    results: list = [None] * len(ids)
    stats = RunStats(rows=len(ids))
    start = time.perf_counter()
    sec_per_token = 0.0
    with bar(len(ids), desc, disable=not progress) as pbar:
        for batch in batches:
            cost = sec_per_token * sum(lengths[i] for i in batch)
            if deadline.expired(cost):
                stats.stopped_by_deadline = True
                break
            t0 = deadline.clock()
            for i, out in zip(batch, step(batch)):
                results[i] = out
            took = deadline.clock() - t0
            n_tokens = sum(lengths[i] for i in batch)
            # Longest-first order: later batches cost at most this much per token, a safe estimate.
            sec_per_token = max(sec_per_token * 0.5, took / max(n_tokens, 1))
            stats.tokens += n_tokens
            stats.padded_tokens += max(lengths[i] for i in batch) * len(batch)
            stats.rows_done += len(batch)
            stats.batches += 1
            pbar.update(len(batch))
    stats.seconds = time.perf_counter() - start
    return results, stats
