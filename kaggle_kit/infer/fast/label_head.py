"""Answer-label logits in fp32 for a model that runs in bf16 or fp16.

A bf16 model rounds its logits to bf16: a logit near 16 moves in steps of 1/16, as wide as the gap
between two answer letters of a small model. SmolLM2-135M on 200 Science Exam rows: bf16 logits agree
with fp32 on the top answer for 85% of rows (median |p - p32| 0.0086); with the label logits taken in
fp32 from the same bf16 hidden state, 95% (0.0035). The hidden state the output layer reads is caught by
a pre-hook and multiplied by the K label rows of its weight in fp32: K dot products a row, no extra
forward, nothing to change in the model; the layer's own full-vocabulary product is skipped
(output_layer.py; Gemma-3's 262k-token head: 39 ms a batch of 8 on this CPU, bench/head_bench.py).

It is used only where it reproduces the model's own logits (checked once per model on a few tokens): a
model that scales or soft-caps its logits after the output layer (Gemma 2, Cohere, Granite), a quantised
or LoRA-wrapped output layer, or an fp32 model keeps the logits the model gives.
"""

from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager

from .output_layer import skipped

log = logging.getLogger("kaggle_kit")

_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> bool: fp32 head reproduces it


class LabelHead:
    """fp32 logits of `label_ids` at the last position; use as
    `with head.capture(): logits = model(...).logits` then `head.logits(logits)`. With `classifier`
    (a (K, hidden) weight) the K logits are that head's on the same hidden state."""

    def __init__(self, model, label_ids: list[int], enabled: bool = True, classifier=None):
        import torch

        self._ids = torch.tensor(label_ids)
        self._layer = model.get_output_embeddings()
        self._hidden = None
        self.classifier = classifier is not None
        if classifier is not None:  # a classification head (heads.py): its rows, whatever the model's logits
            self.active, self._w, self._b = True, classifier.detach().float(), None
            return
        self.active = enabled and _reproduces_model(model, self._layer)
        if self.active:
            self._w, self._b = _fp32_rows(self._layer, self._ids)

    @contextmanager
    def capture(self):
        """Keep the last position's hidden state the output layer reads during the forward inside; the
        layer itself then runs on none of its positions (its full-vocabulary product would be dropped)."""
        if not self.active:
            yield
            return
        with skipped(self._layer) as caught:
            yield
        self._hidden = caught["h"][:, -1] if "h" in caught else None

    def logits(self, model_logits):
        """(B, K) fp32 label logits: from the caught hidden state, else from `model_logits` (B, S, V) at
        their last position."""
        if not self.active or self._hidden is None:
            return model_logits[:, -1].float()[:, self._ids.to(model_logits.device)]
        hidden, self._hidden = self._hidden, None
        return _fp32_product(hidden, self._w, self._b)

    def of_hidden(self, hidden, model_logits):
        """(N, K) fp32 label logits of N final hidden states (N, H) whose logits (N, V) the caller already
        has: as `logits` gives them at a forward's last position (training's evaluation reads its answer
        positions this way)."""
        if not self.active:
            return model_logits.float()[:, self._ids.to(model_logits.device)]
        return _fp32_product(hidden, self._w, self._b)


def label_probs(logits, allowed=None, temperature: float = 1.0):
    """(B, K) probabilities of (B, K) label logits / temperature; a label whose `allowed` ((B, K) booleans)
    is False gets 0 (the choice task's, and training's evaluation from its eval-loss forward)."""
    import torch

    chosen = logits / temperature
    if allowed is not None and not allowed.all():
        chosen = chosen.masked_fill(~allowed.to(chosen.device), float("-inf"))
    return torch.softmax(chosen, dim=-1).cpu().numpy()


def _fp32_rows(layer, ids):
    """The output layer's weight rows (and bias entries) of token `ids`, in fp32."""
    ids = ids.to(layer.weight.device)
    bias = None if layer.bias is None else layer.bias[ids].float()
    return layer.weight[ids].float(), bias


def _fp32_product(hidden, w, b):
    """hidden @ w.T (+ b) in fp32, also inside an autocast region (a training loop's evaluation)."""
    import torch

    with torch.autocast(hidden.device.type, enabled=False):
        out = hidden.float() @ w.T
    return out if b is None else out + b


def _reproduces_model(model, layer) -> bool:
    """Whether the output layer's fp32 product gives the model's logits, to the model dtype's rounding."""
    import torch

    w = getattr(layer, "weight", None)
    if type(layer) is not torch.nn.Linear or w is None or w.dtype not in (torch.bfloat16, torch.float16):
        return False
    if model in _checked:
        return _checked[model]
    caught = {}
    hook = layer.register_forward_hook(lambda m, args, out: caught.update(h=args[0][0]))
    try:
        with torch.inference_mode():
            x = torch.arange(1, 9, device=w.device)[None]  # any 8 token ids: the check is of the layer, not text
            got = model(input_ids=x, use_cache=False).logits[0].float()
    finally:
        hook.remove()
    if "h" not in caught:  # the logits do not come through this layer's forward (no hook fires)
        _checked[model] = False
        return False
    top = got.abs().topk(64, dim=-1).indices.flatten().unique()  # large logits show a scale or a soft cap
    ours = _fp32_product(caught["h"], *_fp32_rows(layer, top))
    step = torch.finfo(w.dtype).eps  # twice the rounding of the model's own output
    ok = bool(torch.allclose(got[:, top], ours, rtol=step, atol=step))
    if not ok:
        log.info("label logits from the model itself: its output layer's product is post-processed")
    _checked[model] = ok
    return ok
