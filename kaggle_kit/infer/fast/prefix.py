"""Shared-prefix KV cache: the tokens that every row of a task starts with (chat template, system prompt,
task instructions) run through the model once; each batch then continues from their keys and values.

On SmolLM2 a Science Exam prompt shares its first 56 of ~248 tokens with every other row (23% of the
work); LMSYS and Prompt Recovery prompts share their instructions likewise. The arithmetic is the same
as running each row whole: the same keys and values, the same positions, the same causal mask.
A batch is laid out as [prefix (cached)] [left padding] [row's own tokens]: padding sits between the
prefix and the rest, masked out, and positions continue from the prefix, so the last position of every
row is still its last token (logits_to_keep=1 keeps working).

Sliding-window layers (Gemma 2/3, Mistral) count their window in cache slots, not positions: the padding
slots between prefix and row would push real keys out of a window that one row alone keeps. So a batch
whose slots (prefix + padded row + generated tokens) exceed the model's smallest window runs whole
left-padded rows instead (exact: their padding comes before every real token), and is counted.
"""

from __future__ import annotations

import inspect
import logging
import os

log = logging.getLogger("kaggle_kit")

MIN_PREFIX = 16  # fewer shared tokens than this save less than the cache's bookkeeping costs


def common_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share, leaving every row at least one token of its own."""
    if len(rows) < 2:
        return 0
    shared = len(os.path.commonprefix(rows))
    return max(0, min(shared, min(len(r) for r in rows) - 1))


def cache_kwarg(model) -> str:
    """The name a model's forward takes its KV cache by: 'cache' (transformers >= 5.2x), else the older
    'past_key_values' (the new name keeps a run free of deprecation warnings)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper takes **kwargs
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache of a model output under either name."""
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def prefix_cache(model, ids: list[int]):
    """A DynamicCache holding the keys and values of `ids` (one row)."""
    import torch

    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        return output_cache(model(input_ids=x, use_cache=True))


class SharedPrefix:
    """The common prefix of a task's rows and its keys/values, computed on first use (a fully resumed
    run never needs them). `length` is 0 when the rows share fewer than `min_tokens` tokens.

    `window` is the model's smallest sliding window (None: no sliding layer); `extra` the tokens a batch
    generates after its rows. A batch that would not fit the window with the prefix runs whole rows."""

    def __init__(self, model, rows: list[list[int]], min_tokens: int = MIN_PREFIX, window=None, extra: int = 0):
        n = common_prefix(rows)
        self.length = n if n >= min_tokens and (window is None or n + 1 + extra <= window) else 0
        self.ids = list(rows[0][: self.length]) if self.length else []
        self.window, self.extra = window, extra
        self.whole_batches = 0  # batches run as whole rows because of the window
        self._model = model
        self._kv = None

    def _keys_values(self) -> list:
        if self._kv is None:
            cache = prefix_cache(self._model, self.ids)
            self._kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._kv

    def cache(self, batch_size: int):
        """A fresh DynamicCache holding the prefix for `batch_size` rows (views: no copy per row)."""
        from transformers import DynamicCache

        data = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in self._keys_values()]
        return DynamicCache(ddp_cache_data=data, config=self._model.config)

    def fits(self, width: int) -> bool:
        """Whether a batch of whole rows `width` tokens wide may use the prefix: the prefix is long enough
        to cache, and the batch's slots, generated tokens included, stay within the sliding window."""
        return bool(self.length) and (self.window is None or width + self.extra <= self.window)

    def batch(self, rows: list[list[int]], pad_id: int, width: int = 0) -> dict:
        """Model inputs for `rows` (whole rows, prefix included; padded to `width` whole-row tokens when
        longer than the longest): input_ids of their own tokens, attention_mask over prefix + padding +
        own tokens, positions continuing from the prefix, and the prefix cache. Without a prefix (or when
        the batch would not fit the window with one): left-padded whole rows, as engine.left_pad gives them."""
        import torch

        from ..engine import left_pad

        device = self._model.device
        width = max(width, *(len(r) for r in rows))
        if not self.fits(width):
            if self.length:
                self.whole_batches += 1
            ids, mask, pos = left_pad(rows, pad_id, device, width)
            return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        ids, mask, pos = left_pad([r[self.length :] for r in rows], pad_id, device, width - self.length)
        ones = torch.ones((len(rows), self.length), dtype=mask.dtype, device=device)
        return {
            "input_ids": ids,
            "attention_mask": torch.cat([ones, mask], dim=1),
            "position_ids": pos + self.length,
            cache_kwarg(self._model): self.cache(len(rows)),
        }
