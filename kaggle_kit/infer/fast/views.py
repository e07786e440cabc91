"""Shared-prefix TTA: the tokens a row's views have in common run once; each view runs only its own end.

Test-time augmentation scores a row several times with its options reordered (Science Exam) or its two
responses swapped (LMSYS). The views of one row start alike (chat template, instructions, question,
retrieved context) and differ only from the first moved option on, so scoring each view whole repeats
that head once per view. Here a batch runs in two stages:

1. the head each row shares with all its views, once per row, continuing from the task's global prefix
   (prefix.py), keeping its keys and values;
2. every view's own tokens, continuing from its row's head: several views side by side in one forward
   (view-major, the head's cache repeated), as many as fit the batch's planned width.

The layout is [global prefix] [padding] [row head] [padding] [view's own tokens]: padding sits in two
places, masked out, and positions continue from each row's head, so every real token has the keys,
values and position it has in the whole row, as in prefix.py. What is shared is counted in tokens of
the actual encoded views, so each view is exactly its own tokenisation. A sliding window counts cache
slots, so a batch whose slots exceed the model's smallest window scores its views whole (counted in
`whole_batches`). LMSYS's A/B swap shares the instructions and the user's prompt; the responses, most
of the row, differ and run once per view. The second forward and the heads' repeated caches cost time
too, so a batch whose two stages would save less than MIN_SAVED of its padded tokens runs whole views
(counted in `unsaved_batches`): measured on 2 EPYC cores in bf16 (bench/tta_bench.py, 2026-12-04),
two stages took 1.06-1.20x the time their padded tokens predict, and LMSYS rows saving 1.6% of them
ran 0.93x as fast as whole views.
"""

from __future__ import annotations

import numpy as np

from .output_layer import skipped
from .prefix import MIN_PREFIX, SharedPrefix, cache_kwarg, common_prefix, output_cache

MIN_SAVED = 0.08  # the share of a batch's padded tokens two stages must save to run (see above)


class ViewPrefix:
    """The heads a task's rows share with their views, run once per row. `views[v][i]` is row i's token
    ids in view v (view 0 the main one). `active` is False when rows share too little with their views
    (fewer than MIN_PREFIX tokens a row beyond the global prefix, on average) or `enabled` is False."""

    def __init__(self, model, views: list[list[list[int]]], window: int | None = None, enabled: bool = True):
        rows = len(views[0]) if views else 0
        on = enabled and len(views) > 1 and rows > 0
        self.views, self.window, self._model = views, window, model
        self.shared = SharedPrefix(model, [r for v in views for r in v] if on else [], window=window)
        self.heads = [common_prefix([v[i] for v in views]) for i in range(rows)] if on else []
        own = sum(h - self.shared.length for h in self.heads)
        self.active = on and own >= MIN_PREFIX * rows
        self.batches = 0  # batches scored through the row heads
        self.whole_batches = 0  # batches whose views ran whole because of the sliding window
        self.unsaved_batches = 0  # batches whose views ran whole because two stages saved too little

    def saved(self) -> float:
        """The share of the views' tokens (beyond the global prefix) that run once instead of per view."""
        g = self.shared.length
        total = sum(len(v[i]) - g for v in self.views for i in range(len(self.heads)))
        repeated = (len(self.views) - 1) * sum(h - g for h in self.heads)
        return repeated / total if total else 0.0

    def applies(self, pad_as: list[int]) -> bool:
        """Whether a batch padded as rows `pad_as` runs in two stages: active, saving at least MIN_SAVED of
        its padded tokens, and its slots (global prefix, padded heads, padded own tokens) within the
        sliding window; else it runs whole views (counted)."""
        if not self.active or self._widths(pad_as)[0] == 0:
            return False
        two, whole = self.padded(pad_as)
        if two > (1 - MIN_SAVED) * whole:
            self.unsaved_batches += 1
            return False
        if self.window is None or self._slots(pad_as) <= self.window:
            return True
        self.whole_batches += 1
        return False

    def padded(self, pad_as: list[int]) -> tuple[int, int]:
        """(tokens in two stages, tokens as whole views) a batch padded as rows `pad_as` runs beyond the
        global prefix, padding included: its heads once and each chunk of own tokens, against every view
        padded to its longest row."""
        g = self.shared.length
        two = len(pad_as) * self._widths(pad_as)[0] + sum(w * len(c) for w, c in self._chunks(pad_as))
        return two, sum(len(pad_as) * (max(len(v[i]) for i in pad_as) - g) for v in self.views)

    def _widths(self, pad_as: list[int]) -> tuple[int, int]:
        """(head width beyond the global prefix, own-token width) of a batch padded as rows `pad_as`."""
        g = self.shared.length
        head = max(self.heads[i] - g for i in pad_as)
        own = max(len(v[i]) - self.heads[i] for v in self.views for i in pad_as)
        return head, own

    def _slots(self, pad_as: list[int]) -> int:
        head, own = self._widths(pad_as)
        return self.shared.length + head + own

    def scores(self, batch: list[int], pad_as: list[int], pad_id: int, run, prune) -> list:
        """Each view's outputs for rows `batch` (padded as rows `pad_as`): one (rows, ...) array a view, in
        view order. `run(rows, inputs)` scores model inputs whose rows are task rows `rows`; `prune()` is
        the context the heads run in."""
        import torch

        self.batches += 1
        g = self.shared.length
        head_width = self._widths(pad_as)[0]
        inputs = self.shared.batch([self.views[0][i][: self.heads[i]] for i in batch], pad_id, g + head_width)
        with torch.inference_mode(), prune(), skipped(self._model.get_output_embeddings()):  # its KV cache only
            cache = output_cache(self._model(**inputs, use_cache=True, logits_to_keep=1))
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        at = {i: j for j, i in enumerate(batch)}
        out = [None] * len(self.views)
        for width, chunk in self._chunks(pad_as):
            chunk = [(i, v) for i, v in chunk if i in at]
            if not chunk:
                continue
            shown = run([i for i, _ in chunk], self._own_inputs(chunk, at, kv, inputs["attention_mask"], pad_id, width))
            for (i, v), p in zip(chunk, shown):
                if out[v] is None:
                    out[v] = np.empty((len(batch), *p.shape), dtype=p.dtype)
                out[v][at[i]] = p
        return out

    def _chunks(self, pad_as: list[int]) -> list[tuple[int, list]]:
        """The (row, view) pairs of a batch padded as rows `pad_as`, longest own part first, cut into
        forwards of at most the tokens the plan gave one view of the batch; each with its padded width.
        On a GPU a pair's copy of its row's head counts too: a forward keeps every layer's keys and values
        of it, where a whole view keeps one layer's at a time. Worked out from `pad_as`, so a row's view
        is padded alike when an out-of-memory split halves the batch."""
        own = {(i, v): len(self.views[v][i]) - self.heads[i] for v in range(len(self.views)) for i in pad_as}
        budget = len(pad_as) * (max(len(self.views[0][i]) for i in pad_as) - self.shared.length)
        head = self._widths(pad_as)[0] if self._model.device.type == "cuda" else 0
        chunks: list[tuple[int, list]] = []
        for item in sorted(own, key=lambda it: (-own[it], it)):
            if not chunks or (len(chunks[-1][1]) + 1) * (chunks[-1][0] + head) > budget:
                chunks.append((own[item], []))
            chunks[-1][1].append(item)
        return chunks

    def _own_inputs(self, chunk: list, at: dict, kv: list, head_mask, pad_id: int, width: int) -> dict:
        """Model inputs for the own tokens of `chunk`'s (row, view) pairs, continuing from their rows' heads
        (`kv`, `head_mask`: the batch's head cache and mask; `at`: a task row's place in the batch)."""
        import torch
        from transformers import DynamicCache

        from ..engine import left_pad

        device = head_mask.device
        take = torch.tensor([at[i] for i, _ in chunk], device=device)
        own = [self.views[v][i][self.heads[i] :] for i, v in chunk]
        ids, mask, pos = left_pad(own, pad_id, device, width)
        starts = torch.tensor([self.heads[i] for i, _ in chunk], device=device)[:, None]
        data = [(k.index_select(0, take), v.index_select(0, take)) for k, v in kv]
        return {
            "input_ids": ids,
            "attention_mask": torch.cat([head_mask.index_select(0, take), mask], dim=1),
            "position_ids": pos + starts,
            cache_kwarg(self._model): DynamicCache(ddp_cache_data=data, config=self._model.config),
        }


def mapped_back(shown, perm, batch, counted):
    """A view's probabilities in the original label order (position j showed label perm[j]; `perm` is one
    list for all rows, or one per row, None where the row sits the view out), adding 1 to `counted` for
    each row the view counts for."""
    back = np.zeros_like(shown)
    if perm and isinstance(perm[0], int):
        back[:, perm] = shown
        counted += 1
        return back
    for j, i in enumerate(batch):
        if perm[i] is not None:
            back[j, perm[i]] = shown[j]
            counted[j] += 1
    return back
