"""Outputs made again in backward instead of kept (kaggle_kit/train/recompute.py): the training loop's
loss and every LoRA gradient bit for bit as when the LoRA layers keep them, in fp32 and in the CPU recipe
(a bf16 base under bf16 autocast), and the norms' outputs and the MLP products no longer kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kaggle_kit.train import data, recompute
from kaggle_kit.train.fast import fast_paths
from kaggle_kit.train.step import loss as step_loss

from .test_train_fast import SIZE, as_built, right_padded, tiny, with_lora


def kept_and_grads(model, on: bool, monkeypatch):
    """(loss, LoRA gradients, bytes kept for backward, recipes kept) of the loop's loss on right_padded()
    rows, with the recipes on or off."""
    (recompute.enable if on else recompute._ON.discard)(model)
    kept, recipes, pack = [0], set(), recompute._pack

    def counting(table, tensor):
        packed = tensor if table is None else pack(table, tensor)
        if isinstance(packed, tuple):
            recipes.add(id(packed[0]))
        else:
            kept[0] += tensor.numel() * tensor.element_size()
        return packed

    monkeypatch.setattr(recompute, "_pack", counting)
    x, mask, labels = right_padded()
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    model.zero_grad(set_to_none=True)
    # off: no hooks of the kit's, so these count what is kept (on: the kit's, inside, take every tensor)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: counting(None, t), lambda t: t):
        loss = step_loss(model, model, SimpleNamespace(head=None), None, x, mask, labels, n_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, kept[0], len(recipes)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_made_again_give_the_kept_ones_gradients_bit_for_bit(family, dtype, monkeypatch):
    model = as_built(with_lora(tiny(family)).train().to(dtype))
    assert fast_paths(model, layers_checkpointed=False).endswith(
        "MLPs recomputing their activation, their outputs made again, the last layer on labelled positions "
        "only, no padding mask on right-padded rows"
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with autocast:
        loss, grads, kept, recipes = kept_and_grads(model, True, monkeypatch)
        want_loss, want_grads, want_kept, none = kept_and_grads(model, False, monkeypatch)
    assert loss == want_loss and grads.keys() == want_grads.keys() and len(grads) == 2 * 7 * 2
    for name, g in want_grads.items():
        assert torch.equal(grads[name], g), name  # bit for bit
    # at least the first layer's post-attention norm (kept by gate and up) and its product, and in the
    # last layer its input norm (its keys and values read every position); the first layer's input norm sees
    # no gradient and keeps autograd's
    item = torch.finfo(dtype).bits // 8
    normed, product = 3 * 14 * SIZE["hidden_size"] * item, 3 * 14 * SIZE["intermediate_size"] * item
    assert none == 0 and recipes >= 2 * SIZE["num_hidden_layers"]
    assert want_kept - kept >= 3 * normed + product


def test_checkpointed_layers_and_evaluations_keep_no_recipes(monkeypatch):
    model = as_built(with_lora(tiny()).train())
    assert "made again" not in fast_paths(model, layers_checkpointed=True)
    assert model not in recompute._ON
    made = []
    monkeypatch.setattr(recompute, "remember", lambda *a: made.append(a))
    with recompute.recomputing(model), torch.no_grad():
        model(input_ids=right_padded()[0])
    assert made == []
