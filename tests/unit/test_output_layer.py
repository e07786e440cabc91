"""The output layer's helpers (infer/fast/output_layer.py) on a tiny randomly initialised Llama."""

import pytest
import torch

from kaggle_kit.infer.fast.output_layer import contiguous_head, skipped

from .. import conftest


def frozen(dtype):
    """A tiny Llama as a peft adapter or QLoRA leaves its base: no weight needs a gradient."""
    torch.manual_seed(0)
    model = conftest.tiny_llama(tie_word_embeddings=False).to(dtype).eval()
    model.requires_grad_(False)
    return model


def left_padded(model):
    ids = torch.randint(3, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4], mask[2, :7] = 0, 0
    return dict(input_ids=ids, attention_mask=mask)


def seen_by_head(model, inputs, **kw):
    """(logits, the input the output layer's product received) of one inference forward."""
    seen = {}
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    try:
        with torch.inference_mode():
            logits = model(**inputs, **kw).logits
    finally:
        hook.remove()
    return logits, seen["x"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_head_gets_a_contiguous_input_and_gives_the_same_logits(dtype):
    """logits_to_keep=1 on a batch slices hidden[:, -1:], a non-contiguous view; torch's CPU product of
    that with a frozen half-precision weight copies the weight once per row (the module docstring has
    the figures). The hook hands the layer a contiguous copy: the same logits, to the dtype's rounding."""
    model = frozen(dtype)
    inputs = left_padded(model)
    plain, x = seen_by_head(model, inputs, logits_to_keep=1)
    assert not x.is_contiguous()  # what transformers hands the head: the case the hook exists for
    assert contiguous_head(model)
    assert not contiguous_head(model)  # idempotent: one hook
    ours, x = seen_by_head(model, inputs, logits_to_keep=1)
    assert x.is_contiguous()
    torch.testing.assert_close(ours, plain, rtol=2**-7, atol=1e-3)


def test_an_fp32_head_is_left_alone():
    assert not contiguous_head(frozen(torch.float32))


def test_a_skipped_head_keeps_its_input_and_gives_no_logits():
    """What training's label positions and the label head read: the final hidden states at the kept
    positions, from a forward whose full-vocabulary product ran on nothing."""
    model = frozen(torch.float32)
    inputs = left_padded(model)
    keep = torch.tensor([4, 9, 11])
    with torch.inference_mode():
        full = model(**inputs, output_hidden_states=True)
        with skipped(model.get_output_embeddings()) as caught:
            out = model(**inputs, logits_to_keep=keep)
    assert out.logits.shape == (3, 0, model.config.vocab_size)
    assert torch.equal(caught["h"], full.hidden_states[-1][:, keep])
    with torch.inference_mode():  # the hook is gone on exit
        assert model(**inputs, logits_to_keep=keep).logits.shape == (3, 3, model.config.vocab_size)
