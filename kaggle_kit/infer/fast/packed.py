"""Weight layouts on a CPU: bf16 linear layers packed once into oneDNN's blocked layout, and 4-bit
layers kept in the layout bitsandbytes trains in.

`F.linear` hands oneDNN a plain (out, in) weight and it is re-laid out on every call; packed once at
load, the same products run 2-4% faster alone (bench shapes, 2 Zen 4 cores) and 100 Science Exam rows
score 2-17% faster in 4 interleaved pairs (mean 8%), with bit-identical probabilities. Inference only: the
packed copy does not follow later changes to the weight (merge adapters into a fresh load, as
models.merge_adapter does) and has no backward. The packed copy is extra memory the size of the weights.
"""

from __future__ import annotations

import logging
from functools import partial

from ...hardware import onednn_has_bf16

log = logging.getLogger("kaggle_kit")

ROWS_HINT = 2048  # tokens a CPU batch carries (primitives.default_batch_tokens): oneDNN picks its layout for it


def _packed_forward(weight, bias, x):
    import torch

    shape = x.shape
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), weight, bias, "none", [None], "")
    return y.view(*shape[:-1], y.shape[-1])


def is_packed(forward) -> bool:
    """True for a forward that pack_linears gave a module."""
    return isinstance(forward, partial) and forward.func is _packed_forward


def pack_linears(model, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Give every plain bf16 nn.Linear of a CPU model a packed-weight forward; returns how many. The
    output layer and LoRA matrices are left alone (the fp32 label head reads the output layer's weight;
    peft drives its adapters). Nothing is packed where oneDNN has no bf16 kernels (an AVX2-only CPU, whose
    profile is fp32 anyway: the op refuses a bf16 weight there)."""
    import torch

    if not onednn_has_bf16():
        return 0
    done = 0
    for name, mod in model.named_modules():
        if type(mod) is not torch.nn.Linear or mod.weight.dtype != torch.bfloat16 or mod.weight.device.type != "cpu":
            continue
        if name.split(".")[-1] in skip or "lora_" in name:  # adapters stay as peft drives them
            continue
        try:
            weight = torch.ops.mkldnn._reorder_linear_weight(mod.weight.detach(), ROWS_HINT)
        except RuntimeError as e:  # a torch build without the op: keep F.linear
            log.debug("linear packing unavailable: %s", e)
            return done
        mod.forward = partial(_packed_forward, weight, mod.bias)
        done += 1
    return done


def keep_4bit_layout(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel; returns modules changed.

    On a CPU with AVX512-BF16, a Linear4bit's first no-grad forward in eval mode repacks its weight in
    place for a gemv-style kernel, which computes slightly different numbers from the layout training
    uses (dequantise to bf16, then one bf16 product; SmolLM2: loss 2.75676 -> 2.75696 on one row).
    - Training always keeps its layout: else it would depend on whether an evaluation ran before a step,
      and a run resumed after a kill (no step-0 evaluation in that process) would drift from the
      uninterrupted one.
    - Inference keeps it as a fast path (models.load_model): the adapter is then scored with the numbers it
      was trained against, and on an AMX CPU faster (40 Science Exam rows through a QLoRA adapter on
      SmolLM2: 10.9 s against 27.0 repacked; 40 Prompt Recovery generations: 34.3 s against 53.2).
    Called before the model's first forward: a repack is not undone (it rounds the block scales to bf16)."""
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
