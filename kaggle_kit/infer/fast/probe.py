"""Each fast path against the plain computation, once per model, on a short probe batch.

The probe is two rows of token ids (any ids: the check is of the arithmetic, not of text) that share a
16-token head and then differ in length, so the batch has padding, a prefix to cache and, for the CPU
attention, enough queries to take the blocked path. A path whose last-position log-probabilities differ
from the plain path's by more than rounding allows is switched off for the model.

A CPU model in bf16 is probed in fp32 (its weights upcast for the probe and restored bit for bit): in
bf16 two correct orders of the same sums already differ by 0.2 in a probe's log-probabilities (SmolLM2,
Gemma-3-270M), as much as a wrong mask. A GPU or quantised model is probed in its own dtype with a loose
bound that catches only gross errors (an exception, NaN, a broken layout); the fp32 tests in
tests/integration/test_families.py are what hold the paths exact.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext

log = logging.getLogger("kaggle_kit")

# Largest |log p| difference over the reference's top tokens that is still rounding. fp32: the same sums in
# another order (SmolLM2 and Gemma-3-270M: 4e-5 at most). Half precision: a smoke bound only (see above).
TOLERANCE = {"float32": 1e-4, "float64": 1e-6}
HALF_TOLERANCE = 1.0
HEAD, TAILS = 16, (5, 27)  # shared tokens; each row's own tokens (the longer row gives 43 queries)


def probe_rows(model) -> list[list[int]]:
    """Two rows of ordinary token ids with a shared head and own tails of different lengths."""
    vocab = model.get_input_embeddings().weight.shape[0]
    head = [(7 + 13 * i) % vocab for i in range(HEAD)]
    return [head + [(101 + 17 * i + 5 * r) % vocab for i in range(n)] for r, n in enumerate(TAILS)]


def _last_logprobs(model, inputs: dict, context=None):
    import torch

    with torch.inference_mode(), context or nullcontext():
        logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1].float()
    return torch.log_softmax(logits, dim=-1)


def _plain(model, rows):
    from ..engine import left_pad

    pad = 0
    ids, mask, pos = left_pad(rows, pad, model.device)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def differs(reference, got, dtype: str) -> float | None:
    """The largest log-probability gap over the reference's top 20 tokens when above the dtype's
    tolerance (or not finite), else None."""
    import torch

    top = reference.topk(min(20, reference.shape[-1]), dim=-1).indices
    gap = (reference.gather(-1, top) - got.gather(-1, top)).abs().max().item()
    if not torch.isfinite(got.gather(-1, top)).all():
        return float("inf")
    return gap if gap > TOLERANCE.get(dtype, HALF_TOLERANCE) else None


def check_paths(model, fast) -> None:
    """Turn off each path of `fast` that does not reproduce the plain computation on the probe."""
    with in_fp32(model):
        _check(model, fast)


@contextmanager
def in_fp32(model):
    """A CPU model that is not quantised runs the block in fp32, outside any autocast region around the
    caller (a training loop's evaluation); every parameter and buffer gets its own dtype back afterwards
    (bf16 -> fp32 -> bf16 is exact). Other models run as they are. The copies are made outside any
    inference mode around the caller: a training model's weights made there could never train again."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    quantised = getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None
    if quantised or any(t.device.type != "cpu" for t in tensors):
        yield
        return
    dtypes = [t.dtype for t in tensors]
    with torch.inference_mode(False):
        for t in tensors:
            if t.is_floating_point():
                t.data = t.data.float()
    try:
        with torch.autocast("cpu", enabled=False):
            yield
    finally:
        with torch.inference_mode(False):
            for t, dt in zip(tensors, dtypes):
                t.data = t.data.to(dt)


def _check(model, fast) -> None:
    from .last_position import last_position_only
    from .prefix import SharedPrefix

    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    rows = probe_rows(model)
    plain = _plain(model, rows)
    reference = _last_logprobs(model, plain)
    if fast.prune_last_layer:
        gap = differs(reference, _last_logprobs(model, plain, last_position_only(model)), dtype)
        if gap is not None:
            fast.turn_off("prune_last_layer", f"the pruned last layer moves log-probabilities by {gap:.2g}")
    if fast.prefix_cache:
        shared = SharedPrefix(model, rows, window=fast.window)
        width = max(len(r) for r in rows)
        if shared.fits(width):
            try:
                gap = differs(reference, _last_logprobs(model, shared.batch(rows, 0)), dtype)
            except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
                fast.turn_off("prefix_cache", f"the model does not continue from a cache ({exc})")
            else:
                if gap is not None:
                    fast.turn_off("prefix_cache", f"a cached prefix moves log-probabilities by {gap:.2g}")
    if fast.cpu_attention:
        _check_attention(model, fast, plain, reference, dtype)


def _check_attention(model, fast, plain, blocked, dtype) -> None:
    """The kit's CPU attention (blocked or sliced) against transformers' eager attention on the same probe."""
    ours = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        eager = _last_logprobs(model, plain)
    finally:
        model.set_attn_implementation(ours)
    gap = differs(eager, blocked, dtype)
    if gap is not None:
        model.set_attn_implementation(plain_attention(model.config))
        fast.turn_off("cpu_attention", f"the blocked attention moves log-probabilities by {gap:.2g}")


def softcapped(config) -> bool:
    """Whether attention scores are soft-capped (Gemma 2): transformers' SDPA refuses those."""
    return getattr(config.get_text_config(decoder=True), "attn_logit_softcapping", None) is not None


def plain_attention(config) -> str:
    """transformers' attention for a model of `config` without the kit's: SDPA, or eager where scores are
    soft-capped or the model's class has no SDPA (gpt-oss: its attention sinks; transformers refuses SDPA
    there at load, and its SDPA function would drop the sinks)."""
    return "eager" if softcapped(config) or not sdpa_supported(config) else "sdpa"


def sdpa_supported(config) -> bool:
    """Whether the causal-LM class transformers builds for `config` supports SDPA (True for a class it
    does not know: from_pretrained says so itself)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (KeyError, ValueError):
        return True
    return bool(getattr(cls, "_supports_sdpa", True))
