"""The output layer (lm_head): fed a contiguous input, and skipped where no logits are read.

torch 2.13's CPU linear, given a half-precision weight that needs no gradient (a frozen base: a peft
adapter loaded for inference, QLoRA training) and a non-contiguous 3-D input, copies the weight once per
row and runs a batched product: `logits_to_keep=1` on a batch slices exactly such an input, hidden[:, -1:].
`python bench/head_bench.py` on this project's 2-core AMX Xeon, 8 rows, bf16: SmolLM2's 49k x 576 head
0.69 s instead of 4.3 ms; Gemma-3's 262k x 640 head 8.4 s instead of 39 ms, and 2.7 GB of weight copies.
`contiguous_head` makes the input contiguous first (the same logits: tests/unit/test_output_layer.py).

Where the logits are not read at all (training's label positions, the label head's K rows, a prefill
kept only for its KV cache), `skipped` hands the layer none of its positions and keeps what it was given.
"""

from __future__ import annotations

from contextlib import contextmanager


def contiguous_head(model) -> bool:
    """Make `model`'s output layer copy a non-contiguous input to contiguous memory before its product
    (half-precision weights only; idempotent). Returns whether a hook was added."""
    import torch

    layer = model.get_output_embeddings()
    weight = getattr(layer, "weight", None)
    if weight is None or weight.dtype not in (torch.bfloat16, torch.float16) or getattr(layer, "_kit_contiguous", 0):
        return False
    layer.register_forward_pre_hook(_contiguous)
    layer._kit_contiguous = True
    return True


def _contiguous(module, args):
    if args and hasattr(args[0], "is_contiguous") and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


@contextmanager
def skipped(layer):
    """Inside, `layer` runs on none of its positions: its input is kept as caught['h'] and it is handed an
    empty slice of it, so the model's logits come out (B, 0, vocab). Yields `caught` (empty if the layer
    did not run)."""
    caught = {}

    def grab(module, args):
        caught["h"] = args[0]
        return (args[0][..., :0, :], *args[1:])

    hook = layer.register_forward_pre_hook(grab)
    try:
        yield caught
    finally:
        hook.remove()
