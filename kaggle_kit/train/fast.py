"""Training's fast paths: the same LoRA step in fewer passes over memory, and less of it kept for backward.

- `fused_lora`: peft adds each LoRA term to its base layer's output in three full-size passes (a copy of
  the base output for 4-bit layers, the term times its scale, the sum), and backward makes one more (the
  gradient times the scale). One `addmm` does it instead: base + scale x (A(x) @ B^T), the scale applied
  inside the product, so backward scales the rank-r products only. The same sum, rounded once instead of
  three times.
- `closed_form_norms`: autograd differentiates an RMSNorm op by op (pow, mean, add, rsqrt, two products,
  the casts), and in half precision keeps an fp32 copy of the input for that (Gemma-3-270M at 4 x 512
  tokens: 0.5 GB of 1.6 GB saved). The norm runs its own forward ops instead (the same output bit for bit,
  checked on each module at patch time), keeps only its input and one fp32 scalar a position, and
  backward is the closed form dx = r (g - xhat mean(g xhat)) in fp32 (g = dy x weight, xhat = x r): the
  same gradient to fp32 rounding. Gemma-3's norm, 4 x 400 x 640 in bf16, forward and backward on a 2-core
  EPYC: 1.3 ms against 2.9 for autograd's, and 2.8 for its ops recomputed in backward under checkpointing.
- `last_layer_on_labels`: the label-position loss (train/data.py) reads the final hidden state at the
  labelled positions only, so in the last decoder layer only the keys and values of the others matter:
  that layer's query and output projections and its MLP run on the labelled positions alone, forward and
  backward (infer/fast/last_position.py). 1/n_layers of the step's matmuls, less the keys and values: ~3%
  on SmolLM2's 30 layers, ~5% on Gemma-3-270M's 18, `loss: answer`; measured on a CPU, where matmuls are a
  third of a step: 1.7% of a Gemma-3 step, SmolLM2's within noise. Off where the layers are checkpointed
  (their recomputation in backward runs outside the forward's block), for mixture-of-experts layers (the
  router's auxiliary loss reads every position) and while LoRA dropout is drawn (`lora_dropout` > 0 in
  training: fewer positions would draw other masks than plain peft draws for the same seed).
- `gated_mlps`: a gated MLP's down_proj(act(gate) x up) keeps four (tokens x intermediate) tensors for
  backward: gate (for act's backward), act(gate) and up (for the product's), and the product (for
  down_proj's LoRA A). act(gate) x up runs as one autograd Function that keeps gate and up and recomputes
  act(gate) in backward (an elementwise op), with autograd's own backward of act and of the product: the
  same output and gradients bit for bit, one intermediate-wide tensor a layer fewer (a quarter of the
  MLP's, 13% of all SmolLM2 keeps at 4 x 512 tokens). Where the MLP's forward is not that formula
  (checked on each module at patch time: Phi-3's fused gate_up_proj among them) it keeps its own.
- `unmasked_padding`: training's rows are right-padded, so in a causal model no real position sees any
  padding (it comes after every real token) and the padding mask changes only what the padding positions
  compute, which no loss reads: a real position's output, and so the loss and every gradient, is the
  same with no mask. Without one transformers makes no (batch, 1, length, length) mask and hands SDPA its
  causal flag: the flash kernels skip the keys above the diagonal (CPU: whole blocks of 512 only), do not
  convert the mask in every layer, and take grouped-query keys and values as they are instead of repeated
  per query head (SmolLM2: 2 x 384 of the 576 values a token keeps per layer for attention). A left-padded
  batch, a model with a layer that is not causal, and mixtures of experts (the router's auxiliary loss
  skips the padding through the mask) keep the mask.

- The norms' and MLPs' outputs are made again in backward instead of kept by the LoRA layers that read
  them (train/recompute.py), where layers are not checkpointed.

All six are on in `train.model.build` unless `fast_paths: false`, as is train/shared_head.py (the tokens
a batch's rows start with run once); a layer, norm or MLP they do not fit keeps its own forward
(tests/unit/test_train_fast.py and test_shared_head.py hold them to peft's numbers).
"""

from __future__ import annotations

import functools
import types
import weakref
from contextlib import nullcontext

from .recompute import autocast_state, enable, remember, replayed

_ON_LABELS: weakref.WeakSet = weakref.WeakSet()  # peft models whose last layer runs on labelled positions
_UNMASKED: weakref.WeakSet = weakref.WeakSet()  # peft models whose right-padded batches run without a mask
EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts")  # config fields of mixture-of-experts


def fast_paths(model, layers_checkpointed: bool) -> str:
    """The fast paths on a peft model (not the last layer's pruning where layers are checkpointed whole);
    returns what was done, for the log."""
    fused = fused_lora(model)
    norms = closed_form_norms(model)
    mlps = gated_mlps(model)
    pruned = not layers_checkpointed and last_layer_on_labels(model)
    last = "the last layer on labelled positions only" if pruned else "the last layer whole"
    mask = "no padding mask" if unmasked_padding(model) else "the padding mask"
    remade = not layers_checkpointed and bool(norms or mlps)
    if remade:
        enable(model)
    again = ", their outputs made again" if remade else ""
    return (
        f"fast paths: {fused} LoRA layers fused, {norms} norms with a closed-form backward, "
        f"{mlps} MLPs recomputing their activation{again}, {last}, {mask} on right-padded rows"
    )


def unmasked_padding(model) -> bool:
    """Let `padding_mask` drop the mask of right-padded batches of `model`; False (and not let) where a layer
    of it is not causal (an `is_causal` attribute set false) or its layers are mixtures of experts."""
    text = model.config.get_text_config(decoder=True)
    causal = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if not causal or not all(causal) or any(getattr(text, k, None) for k in EXPERTS):
        return False
    _UNMASKED.add(model)
    return True


def padding_mask(model, mask):
    """The attention mask a training forward of `model` passes: None for a right-padded batch (each row's
    tokens, then its padding) where `unmasked_padding` let it, else `mask` itself."""
    if model not in _UNMASKED or mask is None or mask.dim() != 2 or not bool(mask[:, 0].all()):
        return mask
    return None if bool((mask[:, 1:] <= mask[:, :-1]).all()) else mask


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

    if model not in _ON_LABELS or (model.training and draws_dropout(last_layer(model))):
        return nullcontext([])
    return positions_only(model, keep)


def draws_dropout(module) -> bool:
    """Whether a dropout module of `module` (a layer, or a whole model; peft's lora_dropout among them) has
    a probability above 0."""
    import torch

    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules())


def fused_lora(model) -> int:
    """Give every peft LoRA linear layer (plain or 4-bit base) the one-`addmm` forward; returns how many.
    A call the fused forward does not fit runs peft's own (see `_fits`). peft's LoRA on a parameter
    (ParamWrapper: "all-linear" on Qwen3-MoE adapts its router's weight and its experts' 3-D weights) is
    not a linear layer and keeps peft's forward."""
    import torch
    from peft.tuners.lora import LoraLayer

    def linear(m) -> bool:  # not peft's LoRA on a parameter (ParamWrapper: a MoE router's or experts' weights)
        return isinstance(m, LoraLayer) and hasattr(m, "lora_A") and isinstance(m.get_base_layer(), torch.nn.Linear)

    return _patch(model, linear, _fused_forward)


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


def closed_form_norms(model) -> int:
    """Give every RMSNorm module whose forward `_norm_form` recognises the closed-form backward; returns how
    many. A norm it does not recognise (another formula, no weight) keeps its own forward."""
    forms = {}
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and (form := _norm_form(module)) is not None:
            module._kit_norm = forms[module] = form
    return _patch(model, forms.__contains__, _closed_form_norm)


def _norm_form(module):
    """(eps, gemma) where the closed-form norm computes `module`'s own forward bit for bit on a probe input:
    Llama's weight x (x r) cast to the input's dtype, or Gemma's (x r) x (1 + weight) in fp32, then cast."""
    import torch

    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not isinstance(eps, float):
        return None
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, weight.numel(), generator=gen) * 3).to(weight.device, weight.dtype)
    with torch.no_grad():
        want = type(module).forward(module, x)
        for gemma in (False, True):
            got = _closed_form_class().apply(x, weight, eps, gemma)
            if got.dtype == want.dtype and torch.equal(got, want):
                return eps, gemma
    return None


def _closed_form_norm(self, x, *args, **kwargs):
    import torch

    if args or kwargs or self.weight.requires_grad or not (torch.is_grad_enabled() and x.requires_grad):
        return type(self).forward(self, x, *args, **kwargs)
    y = _closed_form_class().apply(x, self.weight, *self._kit_norm)
    x, weight, (eps, gemma) = x.detach(), self.weight, self._kit_norm
    remember(y, lambda: _normed(x, weight, eps, gemma)[0])  # kept by the norm already: y is made again
    return y


def _normed(x, weight, eps: float, gemma: bool):
    """(y, r): the closed-form norm's output and r = 1 / sqrt(mean(x^2) + eps), in fp32."""
    import torch

    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (((xf * r) * (1.0 + weight.float())).type_as(x) if gemma else weight * (xf * r).to(x.dtype)), r


@functools.cache
def _closed_form_class():
    """The autograd Function, built at first use (importing this module loads no torch)."""
    import torch

    class ClosedFormNorm(torch.autograd.Function):
        """RMSNorm with a frozen weight: y = weight x (x r) (Llama) or (x r) x (1 + weight) (Gemma), r = 1 /
        sqrt(mean(x^2) + eps); saves x and r, not autograd's fp32 intermediates."""

        @staticmethod
        def forward(ctx, x, weight, eps, gemma):
            y, r = _normed(x, weight, eps, gemma)
            ctx.save_for_backward(x, r, weight)
            ctx.gemma = gemma
            return y

        @staticmethod
        def backward(ctx, dy):
            x, r, weight = ctx.saved_tensors
            # dL/d(x r): Llama multiplies in the input's dtype (as autograd does there), Gemma in fp32
            g = dy.float() * (1.0 + weight.float()) if ctx.gemma else (dy * weight).float()
            xhat = x.float() * r
            dx = r * (g - xhat * (g * xhat).mean(-1, keepdim=True))
            return dx.to(x.dtype), None, None, None

    return ClosedFormNorm


def gated_mlps(model) -> int:
    """Give every MLP whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)) (Llama, Mistral, Qwen,
    Gemma: checked bit for bit on a probe input) the forward that keeps gate and up, not act(gate), for
    backward; returns how many."""
    return _patch(model, _is_gated_mlp, _gated_mlp_forward)


def _is_gated_mlp(module) -> bool:
    import torch

    if not all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    floats = [p.dtype for p in module.parameters() if p.is_floating_point()]
    width = getattr(module.gate_proj, "in_features", None)
    if not floats or not isinstance(width, int):
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, width, generator=gen).to(next(module.parameters()).device, floats[0])
    modes = [(m, m.training) for m in module.modules()]
    module.eval()  # dropout off for the probe
    try:
        with torch.no_grad():
            want = type(module).forward(module, x)
            gate, up = module.gate_proj(x), module.up_proj(x)
            got = module.down_proj(_gated_product_class().apply(gate, up, module.act_fn))
    finally:
        for m, training in modes:
            m.training = training
    return isinstance(want, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want)


def _gated_mlp_forward(self, x, *args, **kwargs):
    import torch

    if args or kwargs or not torch.is_grad_enabled():
        return type(self).forward(self, x, *args, **kwargs)
    gate = self.gate_proj(x)  # before up_proj, as the MLP's own forward: dropout draws in the same order
    up = self.up_proj(x)
    product = _gated_product_class().apply(gate, up, self.act_fn)
    gate, up, act = gate.detach(), up.detach(), self.act_fn
    remember(product, lambda: act(gate) * up)  # GatedProduct keeps gate and up: the product is made again
    return self.down_proj(product)


@functools.cache
def _gated_product_class():
    import torch

    class GatedProduct(torch.autograd.Function):
        """act(gate) x up, keeping gate and up; backward recomputes act(gate) and runs autograd's backward
        of act and of the product (grad x other, as autograd's), so the gradients are autograd's bit for bit."""

        @staticmethod
        def forward(ctx, gate, up, act):
            ctx.save_for_backward(gate, up)
            # act runs again under the forward's autocast (its pow would run in fp32)
            ctx.act, ctx.autocast = act, autocast_state(gate.device.type)
            return act(gate) * up

        @staticmethod
        def backward(ctx, dy):
            gate, up = ctx.saved_tensors
            with torch.enable_grad(), replayed(ctx.autocast):
                g = gate.detach().requires_grad_()
                s = ctx.act(g)
            d_up = dy * s.detach() if ctx.needs_input_grad[1] else None
            d_gate = None
            if ctx.needs_input_grad[0]:
                (d_gate,) = torch.autograd.grad(s, g, (dy * up).to(s.dtype))
            return d_gate, d_up, None

    return GatedProduct
