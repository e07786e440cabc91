"""Shared-prefix KV cache: the tokens that every row of a task starts with (chat template, system prompt,
task instructions) run through the model once; each batch then continues from their keys and values.

On SmolLM2 a Science Exam prompt shares its first 56 of ~248 tokens with every other row (23% of the
work); LMSYS and Prompt Recovery prompts share their instructions likewise. The arithmetic is the same
as running each row whole: the same keys and values, the same positions, the same causal mask.
A batch is laid out as [prefix (cached)] [left padding] [row's own tokens]: padding sits between the
prefix and the rest, masked out, and positions continue from the prefix, so the last position of every
row is still its last token (logits_to_keep=1 keeps working).
"""

from __future__ import annotations

import os

MIN_PREFIX = 16  # fewer shared tokens than this save less than the cache's bookkeeping costs


def common_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share, leaving every row at least one token of its own."""
    if len(rows) < 2:
        return 0
    shared = len(os.path.commonprefix(rows))
    return max(0, min(shared, min(len(r) for r in rows) - 1))


class SharedPrefix:
    """The common prefix of a task's rows and its keys/values, computed on first use (a fully resumed
    run never needs them). `length` is 0 when the rows share fewer than `min_tokens` tokens."""

    def __init__(self, model, rows: list[list[int]], min_tokens: int = MIN_PREFIX):
        n = common_prefix(rows)
        self.length = n if n >= min_tokens else 0
        self.ids = list(rows[0][: self.length]) if self.length else []
        self._model = model
        self._kv = None

    def _keys_values(self) -> list:
        import torch

        if self._kv is None:
            x = torch.tensor([self.ids], dtype=torch.long, device=self._model.device)
            with torch.inference_mode():
                cache = self._model(input_ids=x, use_cache=True).past_key_values
            self._kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._kv

    def cache(self, batch_size: int):
        """A fresh DynamicCache holding the prefix for `batch_size` rows (views: no copy per row)."""
        from transformers import DynamicCache

        data = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in self._keys_values()]
        return DynamicCache(ddp_cache_data=data, config=self._model.config)

    def batch(self, rows: list[list[int]], pad_id: int, width: int = 0) -> dict:
        """Model inputs for `rows` (whole rows, prefix included; padded to `width` whole-row tokens when
        longer than the longest): input_ids of their own tokens, attention_mask over prefix + padding +
        own tokens, positions continuing from the prefix, and the prefix cache. Without a prefix:
        left-padded whole rows, as engine.left_pad gives them."""
        import torch

        from .engine import left_pad

        device = self._model.device
        ids, mask, pos = left_pad([r[self.length :] for r in rows], pad_id, device, max(0, width - self.length))
        if not self.length:
            return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        ones = torch.ones((len(rows), self.length), dtype=mask.dtype, device=device)
        return {
            "input_ids": ids,
            "attention_mask": torch.cat([ones, mask], dim=1),
            "position_ids": pos + self.length,
            "past_key_values": self.cache(len(rows)),
        }
