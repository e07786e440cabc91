"""Training's fast paths: the same LoRA step in fewer passes over memory, and less of it kept for backward.

- `fused_lora`: peft adds each LoRA term to its base layer's output in three full-size passes (a copy of
  the base output for 4-bit layers, the term times its scale, the sum), and backward makes one more (the
  gradient times the scale). One `addmm` does it instead: base + scale x (A(x) @ B^T), the scale applied
  inside the product, so backward scales the rank-r products only. The same sum, rounded once instead of
  three times.
- `recomputed_norms`: an RMSNorm that upcasts a half-precision input keeps its fp32 copy for backward
  (Gemma-3-270M at 4 x 512 tokens: 0.5 GB of 1.6 GB saved). It runs under non-reentrant checkpointing
  instead: it keeps the half-precision input and runs its same ops again in backward, so its gradients are
  bit for bit the ones it had.
- `last_layer_on_labels`: the label-position loss (train/data.py) reads the final hidden state at the
  labelled positions only, so in the last decoder layer only the keys and values of the others matter:
  that layer's query and output projections and its MLP run on the labelled positions alone, forward and
  backward (infer/fast/last_position.py). 1/n_layers of the step's matmuls, less the keys and values: ~3%
  on SmolLM2's 30 layers, ~5% on Gemma-3-270M's 18, `loss: answer`; measured on a CPU, where matmuls are a
  third of a step: 1.7% of a Gemma-3 step, SmolLM2's within noise. Off where the layers are checkpointed
  (their recomputation in backward runs outside the forward's block), for mixture-of-experts layers (the
  router's auxiliary loss reads every position) and while LoRA dropout is drawn (`lora_dropout` > 0 in
  training: fewer positions would draw other masks than plain peft draws for the same seed).

All three are on in `train.model.build` unless `fast_paths: false`; a layer or norm they do not fit keeps
its own forward (tests/unit/test_train_fast.py holds them to peft's numbers).
"""

from __future__ import annotations

import types
import weakref
from contextlib import nullcontext

_ON_LABELS: weakref.WeakSet = weakref.WeakSet()  # peft models whose last layer runs on labelled positions
EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts")  # config fields of mixture-of-experts


def fast_paths(model, half: bool, layers_checkpointed: bool) -> str:
    """The fast paths on a peft model (the norms only in half precision, where they upcast, and neither they
    nor the last layer's pruning where layers are checkpointed whole); returns what was done, for the log."""
    fused = fused_lora(model)
    norms = recomputed_norms(model) if half and not layers_checkpointed else 0
    pruned = not layers_checkpointed and last_layer_on_labels(model)
    last = "the last layer on labelled positions only" if pruned else "the last layer whole"
    return f"fast paths: {fused} LoRA layers fused, {norms} norms recomputed in backward, {last}"


def last_layer_on_labels(model) -> bool:
    """Let `on_labels` prune the last decoder layer of `model` to the labelled positions; False (and not
    let) where it has no decoder layers or its layers are mixtures of experts."""
    from ..infer.fast.last_position import last_layer

    text = model.config.get_text_config(decoder=True)
    if last_layer(model) is None or any(getattr(text, k, None) for k in EXPERTS):
        return False
    _ON_LABELS.add(model)
    return True


def on_labels(model, keep):
    """The block a label-position forward runs in: the last layer's per-position work on positions `keep`
    (the forward's logits_to_keep) where `last_layer_on_labels` let it and no dropout draws masks there
    (LoRA dropout in training: the pruned layer would draw other masks than the whole one), else nothing."""
    from ..infer.fast.last_position import last_layer, positions_only

    if model not in _ON_LABELS or (model.training and _draws_dropout(last_layer(model))):
        return nullcontext([])
    return positions_only(model, keep)


def _draws_dropout(layer) -> bool:
    """Whether a dropout module of `layer` (peft's lora_dropout among them) has a probability above 0."""
    import torch

    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in layer.modules())


def fused_lora(model) -> int:
    """Give every peft LoRA linear layer (plain or 4-bit base) the one-`addmm` forward; returns how many.
    A call the fused forward does not fit runs peft's own (see `_fits`)."""
    from peft.tuners.lora import LoraLayer

    return _patch(model, lambda m: isinstance(m, LoraLayer) and hasattr(m, "lora_A"), _fused_forward)


def _patch(model, wanted, forward) -> int:
    """Give each module of `model` that `wanted` picks, and that has no forward of its own yet, `forward`
    as its method; returns how many (so a second call changes nothing)."""
    done = 0
    for module in model.modules():
        if wanted(module) and "forward" not in module.__dict__:
            module.forward = types.MethodType(forward, module)
            done += 1
    return done


def _fits(layer, x, args, kwargs) -> str | None:
    """The adapter the fused forward computes for this call, or None where peft's forward must run: adapters
    off or merged, mixed adapters per row, a LoRA variant (DoRA), a bias on B, several active adapters, or
    (without autocast) an input whose dtype differs from the LoRA weights'."""
    import torch

    if args or kwargs or layer.disable_adapters or layer.merged or x.dim() < 2:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if not isinstance(layer.lora_A[name], torch.nn.Linear) or name in getattr(layer, "lora_variant", {}):
        return None
    if layer.lora_B[name].bias is not None:
        return None
    if not torch.is_autocast_enabled(x.device.type) and x.dtype != layer.lora_A[name].weight.dtype:
        return None
    return name


def _fused_forward(self, x, *args, **kwargs):
    import torch

    name = _fits(self, x, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    h = self.lora_A[name](self.lora_dropout[name](x))
    if result.dtype != h.dtype:  # dtypes addmm cannot mix: peft's sum, the term cast to the output's dtype
        return result + (self.lora_B[name](h) * self.scaling[name]).to(result.dtype)
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        h.reshape(-1, h.shape[-1]),
        self.lora_B[name].weight.t(),
        alpha=self.scaling[name],
    )
    return out.view(result.shape)


def recomputed_norms(model) -> int:
    """Run every RMSNorm module under non-reentrant checkpointing; returns how many. Only worth it (and
    only called) where the model computes in half precision and the layers are not already checkpointed."""
    return _patch(model, lambda m: type(m).__name__.endswith("RMSNorm"), _recomputed_norm)


def _recomputed_norm(self, x, *args, **kwargs):
    import torch
    from torch.utils.checkpoint import checkpoint

    if not (torch.is_grad_enabled() and x.requires_grad):
        return type(self).forward(self, x, *args, **kwargs)
    # a norm draws no random numbers: no generator state to stash and restore per call
    return checkpoint(type(self).forward, self, x, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)
