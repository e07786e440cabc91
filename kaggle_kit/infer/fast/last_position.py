"""Choice scoring reads one position: in the last decoder layer only the keys and values of the others
matter, so that layer's per-position work (query and output projections, MLP) runs on the last one.

The last layer's query, output projection and MLP are about 94% of its matmuls (SmolLM2: 3.3M of 3.5M
parameters), so 1/n_layers of a forward is saved (3% for SmolLM2's 30 layers, 2-3% of Gemma's or
Llama's 28-42). Rows are left-padded, so the last position is every row's last token. The other
positions get the last one's values broadcast (no copy): finite numbers nothing reads.

Training's label-position loss (train/data.py) reads the positions it passes as `logits_to_keep`; there
`positions_only` runs the same modules on those positions and leaves zeros at the others (a scatter
rather than a broadcast, so autograd carries each kept position's gradient back on its own).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

PER_POSITION = ("self_attn.q_proj", "self_attn.o_proj", "mlp")  # Llama, Mistral, Qwen, Gemma names


def last_layer(model):
    """The last decoder layer of a causal LM (through a peft wrapper), or None when it has no `layers`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    return layers[-1] if layers is not None and len(layers) else None


def _last_only(forward, x, *args, **kwargs):
    """forward on the last position of a (B, S, H) input, broadcast back to (B, S, out)."""
    import torch

    if x.dim() != 3 or x.shape[1] == 1:
        return forward(x, *args, **kwargs)
    y = forward(x[:, -1:], *args, **kwargs)
    if not isinstance(y, torch.Tensor):  # e.g. a mixture-of-experts block returning (out, router logits)
        return forward(x, *args, **kwargs)
    return y.expand(x.shape[0], x.shape[1], y.shape[-1])


def _kept_only(forward, x, *args, keep, **kwargs):
    """forward on positions `keep` (1-D index tensor) of a (B, S, H) input; (B, S, out), zero elsewhere.
    No position kept (a batch without labels) or all of them: forward on them all."""
    import torch

    if x.dim() != 3 or not 0 < len(keep) < x.shape[1]:
        return forward(x, *args, **kwargs)
    y = forward(x[:, keep], *args, **kwargs)
    if not isinstance(y, torch.Tensor):
        return forward(x, *args, **kwargs)
    return y.new_zeros(x.shape[0], x.shape[1], y.shape[-1]).index_copy(1, keep, y)


@contextmanager
def last_position_only(model):
    """Within the block, the model's outputs are right at the last position only (all a logits_to_keep=1
    forward reads); the per-position modules of its last layer are restored on exit, errors included."""
    with _per_position(model, _last_only) as names:
        yield names


@contextmanager
def positions_only(model, keep):
    """Within the block, the model's outputs are right at positions `keep` only (a 1-D index tensor: what a
    forward with logits_to_keep=keep reads), under autograd too; restored on exit, errors included."""
    with _per_position(model, partial(_kept_only, keep=keep)) as names:
        yield names


@contextmanager
def _per_position(model, wrapper):
    """Give the per-position modules of the model's last layer the forward `partial(wrapper, forward)`
    for the block; yields their names."""
    layer = last_layer(model)
    found = {n: _submodule(layer, n) for n in PER_POSITION} if layer is not None else {}
    names = [n for n, m in found.items() if m is not None]
    mods = [found[n] for n in names]
    saved = [m.__dict__.get("forward") for m in mods]  # an accelerate hook may have set one already
    for m in mods:
        m.forward = partial(wrapper, m.forward)
    try:
        yield names
    finally:
        for m, f in zip(mods, saved):
            if f is None:
                del m.forward
            else:
                m.forward = f


def _submodule(layer, name: str):
    """layer's submodule at dotted path `name`, or None where this architecture has none."""
    try:
        return layer.get_submodule(name)
    except AttributeError:
        return None
