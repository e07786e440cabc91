"""One optimizer step's forward and backward: a micro-batch's loss (logits only where a label is, the
forward keeping recipes for backward), and the step's micro-batches with their gradients summed, cut into
pieces when the step runs out of memory. The fit() loop (train/loop.py) calls them once a step."""

from __future__ import annotations

import contextlib
import logging

from ..infer.engine import free_cuda_cache, is_oom
from . import data, recompute

log = logging.getLogger("kaggle_kit")


def loss(model, core, cfg, split, ids, mask, labels, n_items: int, soft=None):
    """The loss of one micro-batch, divided by the labelled items of the whole step: the classification
    head's cross-entropy (head: classifier), the teacher's (soft labels), or the label tokens' NLL. Its
    forward keeps recipes for what backward can make again (train/recompute.py)."""
    with recompute.recomputing(core):
        return _micro_batch_loss(model, core, cfg, split, ids, mask, labels, n_items, soft)


def _micro_batch_loss(model, core, cfg, split, ids, mask, labels, n_items: int, soft=None):
    if cfg.head == "classifier":
        return data.class_loss(*data.class_logits(model, core, ids, mask, labels, split.label_ids), n_items)
    if soft is None and data.head_is_exact(core, ids):  # logits at labelled positions only, in chunks
        return data.chunked_token_loss(core, *data.labelled_hidden(model, core, ids, mask, labels), n_items)
    logits, targets = data.label_logits(model, ids, mask, labels, core)
    if soft is None:
        return data.token_loss(logits, targets, n_items)
    return data.distill_loss(logits, targets, soft, split.label_ids, cfg.distill_weight, n_items)


def accumulate(run, examples: list, n_items: int, state: dict, opt, processes: int) -> float:
    """`run(piece, n_items, last)` (`forward_backward`) over a step's micro-batches; the step's loss sum.
    A step out of memory (one process) starts again with its micro-batches cut into pieces of at most half
    the padded tokens that failed, as is every later forward (`state['forward_tokens']`, checkpointed):
    the same gradient to rounding, each piece's loss being divided by the step's labelled tokens. A row
    that does not fit alone, or an OOM under DDP (the other processes would wait), stops the run."""
    while True:
        parts = [p for ex in examples for p in data.pieces(ex, state.get("forward_tokens"))]
        loss_sum = 0.0
        try:
            for k, piece in enumerate(parts):
                loss_sum += run(piece, n_items, k == len(parts) - 1) * n_items
            return loss_sum
        except (RuntimeError, MemoryError) as exc:
            rows, width = len(piece), max(len(e.input_ids) for e in piece)
            if not is_oom(exc) or processes > 1 or rows == 1:
                if is_oom(exc):
                    log.error(
                        "out of memory at %d rows x %d tokens: lower batch_size or max_length, or set "
                        "gradient_checkpointing: true",
                        rows,
                        width,
                    )
                raise
        opt.zero_grad(set_to_none=True)  # the failed step's partial gradients
        free_cuda_cache()
        cap = state["forward_tokens"] = rows * width // 2
        log.warning(
            "step %d: %d rows x %d tokens out of memory; the step runs again, every forward from now on in "
            "pieces of at most %d padded tokens (the same gradient)",
            state["step"] + 1,
            rows,
            width,
            cap,
        )


def forward_backward(accelerator, model, core, cfg, split, precision, tok, piece: list, n_items: int, last: bool):
    """Forward and backward of one piece (a list of examples), DDP's all-reduce only on the step's `last`;
    returns its loss (already divided by the step's labelled tokens) as a float."""
    import torch

    ids, mask, labels = (t.to(accelerator.device) for t in data.collate(piece, tok.pad_token_id))
    sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
    with sync, precision():
        # logits only where a label is; loss = their NLL / labelled tokens of the whole step
        soft = torch.tensor([e.soft for e in piece], device=accelerator.device) if cfg.soft_labels else None
        value = loss(model, core, cfg, split, ids, mask, labels, n_items, soft)
        accelerator.backward(value)
    return float(value.detach())
