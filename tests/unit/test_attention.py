"""The blocked CPU attention (infer/fast/attention.py) against transformers' SDPA path, on random tensors and
on a tiny randomly initialised Llama (no files, no download)."""

import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kaggle_kit.infer.fast import attention

from .. import conftest

HEADS, KV_HEADS, DIM = 6, 2, 16


def module(causal=True):
    return types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=causal, layer_idx=0, training=False)


def inputs(batch, q_len, kv_len, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, HEADS, q_len, DIM, generator=g).to(dtype)
    k = torch.randn(batch, KV_HEADS, kv_len, DIM, generator=g).to(dtype) * 2  # scores of a few units
    v = torch.randn(batch, KV_HEADS, kv_len, DIM, generator=g).to(dtype)
    return q, k, v


def padded_causal_mask(pads, q_len, kv_len):
    """(B, 1, Q, K) boolean as transformers builds it for left-padded rows after a cached prefix of
    kv_len - q_len tokens: query i sees key j when j <= offset + i and j is not padding."""
    offset = kv_len - q_len
    causal = torch.arange(kv_len)[None, :] <= torch.arange(offset, kv_len)[:, None]
    rows = []
    for pad in pads:
        real = torch.ones(kv_len, dtype=torch.bool)
        real[offset : offset + pad] = False  # padding sits between the prefix and the row's tokens
        rows.append(causal & real[None, :])
    return torch.stack(rows)[:, None]


def both(q, k, v, mask, causal=True):
    mod = module(causal)
    ours = attention.blocked_attention(mod, q, k, v, mask, scaling=DIM**-0.5)[0]
    sdpa = sdpa_attention_forward(mod, q, k, v, mask, scaling=DIM**-0.5, is_causal=causal)[0]
    return ours, sdpa


@pytest.mark.parametrize("q_len,kv_len", [(130, 130), (130, 170), (48, 60), (97, 97)])
def test_matches_sdpa_in_fp32_with_padding_prefix_and_ragged_blocks(q_len, kv_len):
    q, k, v = inputs(3, q_len, kv_len, torch.float32)
    mask = padded_causal_mask([0, 7, 40], q_len, kv_len)
    ours, sdpa = both(q, k, v, mask)
    real = mask[:, 0].any(-1)  # query rows that see something (padding rows differ by convention)
    assert ours.shape == sdpa.shape == (3, q_len, HEADS, DIM)
    torch.testing.assert_close(ours[real], sdpa[real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("q_len", [100, 12])  # the blocked path, and SDPA's (under MIN_QUERIES)
def test_no_mask_means_causal_for_the_last_positions_or_full_attention(causal, q_len):
    """No mask and fewer queries than keys: the queries are the last q_len positions (Gemma 4 drops the
    others before its KV-shared layers, masks built for the whole row), as the causal mask of those
    positions says; SDPA's own causal flag would align them with the first keys (transformers keeps SDPA
    out of that case). Regression: Gemma 4's perplexity was off by up to 1.06 nats a token."""
    q, k, v = inputs(2, q_len, 130, torch.float32, seed=1)
    ours = attention.blocked_attention(module(causal), q, k, v, None, scaling=DIM**-0.5)[0]
    last = torch.arange(130) <= torch.arange(130 - q_len, 130)[:, None]
    mask = last[None, None] if causal else None
    want = sdpa_attention_forward(module(causal), q, k, v, mask, scaling=DIM**-0.5, is_causal=False)[0]
    torch.testing.assert_close(ours, want, atol=2e-5, rtol=1e-4)
    if causal:  # the last query sees everything, so causality shows only earlier: check it is there
        full = attention.blocked_attention(module(False), q, k, v, None, scaling=DIM**-0.5)[0]
        assert not torch.allclose(ours[:, 0], full[:, 0], atol=1e-3)


def test_additive_float_mask_is_added():
    q, k, v = inputs(2, 64, 64, torch.float32, seed=2)
    bias = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    ours, sdpa = both(q, k, v, bias, causal=False)
    torch.testing.assert_close(ours, sdpa, atol=2e-5, rtol=1e-4)


def test_bf16_error_is_the_flash_kernels():
    """q.k in fp32 and softmax in fp32 as the flash kernel does: no more error against an fp32 reference
    than SDPA's bf16 path (rounding the scores to bf16 instead would double it)."""
    q, k, v = inputs(4, 190, 246, torch.float32, seed=4)
    mask = padded_causal_mask([0, 3, 11, 30], 190, 246)
    ref = both(q, k, v, mask)[1]
    ours, sdpa = both(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    real = mask[:, 0].any(-1)
    err_ours = (ours.float() - ref)[real].abs().mean()
    err_sdpa = (sdpa.float() - ref)[real].abs().mean()
    assert ours.dtype == torch.bfloat16
    assert err_ours < 1.25 * err_sdpa, (err_ours, err_sdpa)


def test_fully_masked_padding_rows_stay_finite():
    """A left-padding query sees no key; -inf there would give NaN, which the next layer multiplies by 0
    and keeps (0 x NaN = NaN) in every real row."""
    q, k, v = inputs(2, 40, 40, torch.bfloat16, seed=5)
    mask = padded_causal_mask([0, 25], 40, 40)
    ours = both(q, k, v, mask)[0]
    assert torch.isfinite(ours.float()).all()


def test_a_masks_bias_is_built_once_and_dropped_with_it():
    """The layers of a forward pass one mask object: its bias is built by the first and handed to the
    rest (the same tensor), a new mask gets its own, and the kept bias goes when its mask is freed."""
    mask = padded_causal_mask([0, 7], 60, 60)
    first = attention._shared_bias(mask, True, 60, 60, 0, "cpu")
    assert attention._shared_bias(mask, True, 60, 60, 0, "cpu") is first
    torch.testing.assert_close(first, attention._bias(mask, True, 60, 60, 0, "cpu"))
    other = mask.clone()
    other[1, :, :, 7:20] = False
    assert not torch.equal(attention._shared_bias(other, True, 60, 60, 0, "cpu"), first)
    key = (id(mask), True, 60, 60, 0)
    assert key in attention._BIASES
    del mask
    assert key not in attention._BIASES  # freed with the mask (refcounting: no collector needed)
    additive = torch.zeros(1, 1, 60, 60)
    assert attention._shared_bias(additive, False, 60, 60, 0, "cpu") is additive  # used as it is, not kept
    assert all(ref() is not additive for ref, _ in attention._BIASES.values())


def test_short_queries_and_odd_head_sizes_go_to_sdpa_unchanged():
    q, k, v = inputs(2, 1, 50, torch.float32, seed=6)
    ours, sdpa = both(q, k, v, None)
    assert torch.equal(ours, sdpa)
    q, k, v = inputs(1, 64, 64, torch.float32, seed=7)
    ours, sdpa = both(q, k, v[..., :8], None)  # value heads narrower than query heads
    assert torch.equal(ours, sdpa)


@pytest.mark.parametrize("q_len,kv_len", [(64, 90), (1, 50), (5, 40)])
def test_soft_capped_scores_are_capped_as_gemma2s_eager_code_caps_them(q_len, kv_len):
    """Regression: a capped layer (Gemma 2) went to SDPA, which raises on a cap (transformers 5.24;
    older versions silently dropped it), so no Gemma 2 could run. Long query blocks take the blocked
    path, decode steps an eager product; both equal transformers' own Gemma 2 eager attention."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    q, k, v = inputs(3, q_len, kv_len, torch.float32, seed=9)
    q = q * 4  # scores of tens of units: a cap of 5 changes them
    mask = padded_causal_mask([0, 3, 11], q_len, kv_len)
    additive = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    mod = module()
    ours = attention.blocked_attention(mod, q, k, v, mask, scaling=DIM**-0.5, softcap=5.0)[0]
    theirs = eager_attention_forward(mod, q, k, v, additive, scaling=DIM**-0.5, softcap=5.0)[0]
    uncapped = eager_attention_forward(mod, q, k, v, additive, scaling=DIM**-0.5)[0]
    real = mask[:, 0].any(-1)
    torch.testing.assert_close(ours[real], theirs[real], atol=2e-5, rtol=1e-4)
    assert (ours[real] - uncapped[real]).abs().max() > 0.1  # the cap mattered


def tiny_llama(attn: str):
    attention.register()
    return conftest.tiny_llama(num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, attn_implementation=attn)


def test_a_model_gives_sdpas_logits_and_generations():
    """Registered as an attention implementation, a left-padded batch gives SDPA's logits and the same
    greedy continuation (prefill through the blocked path, decode steps through SDPA)."""
    ours, sdpa = tiny_llama(attention.NAME), tiny_llama("sdpa")
    assert ours.config._attn_implementation == attention.NAME
    ids = torch.randint(3, 128, (3, 70), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[1, :9], mask[2, :33] = 0, 0
    with torch.inference_mode():
        a = ours(input_ids=ids, attention_mask=mask).logits
        b = sdpa(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        torch.testing.assert_close(a[real], b[real], atol=1e-4, rtol=1e-4)
        gen = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(ids, **gen), sdpa.generate(ids, **gen))


def counted_sdpa(monkeypatch) -> list:
    """The (queries, keys) of each call the kit makes to transformers' SDPA path from now on."""
    calls = []

    def counted(module, query, key, *args, **kwargs):
        calls.append((query.shape[2], key.shape[2]))
        return sdpa_attention_forward(module, query, key, *args, **kwargs)

    monkeypatch.setattr("transformers.integrations.sdpa_attention.sdpa_attention_forward", counted)
    return calls


def sliced_and_sdpa(q, k, v, mask, causal=True):
    mod = module(causal)
    ours = attention.sliced_sdpa(mod, q, k, v, mask, scaling=DIM**-0.5)[0]
    sdpa = sdpa_attention_forward(mod, q, k, v, mask, scaling=DIM**-0.5, is_causal=causal)[0]
    return ours, sdpa


@pytest.mark.parametrize("q_len,kv_len", [(600, 600), (530, 700), (512, 512)])
def test_sliced_sdpa_matches_sdpa_whole_with_padding_prefix_and_ragged_blocks(q_len, kv_len, monkeypatch):
    """The AMX path: torch's flash kernel a block of queries at a time, each with the keys up to its last
    query: the same numbers as one call over every key (fp32: to rounding) on long left-padded rows after
    a cached prefix, a last block shorter than the others included; and it did slice."""
    calls = counted_sdpa(monkeypatch)
    q, k, v = inputs(3, q_len, kv_len, torch.float32, seed=9)
    mask = padded_causal_mask([0, 7, 300], q_len, kv_len)
    ours, sdpa = sliced_and_sdpa(q, k, v, mask)
    real = mask[:, 0].any(-1)
    assert ours.shape == sdpa.shape == (3, q_len, HEADS, DIM)
    torch.testing.assert_close(ours[real], sdpa[real], atol=2e-5, rtol=1e-4)
    block, offset = attention.SDPA_BLOCK, kv_len - q_len
    ends = [min(q_len, s + block) for s in range(0, q_len, block)]
    assert calls == [(e - s, offset + e) for s, e in zip(range(0, q_len, block), ends)]


def test_sliced_sdpa_leaves_short_rows_masks_it_cannot_slice_and_caps_to_others():
    """Rows under 2 x SDPA_BLOCK, no mask (SDPA's causal flag), a non-causal layer: SDPA whole, the same
    tensor; a soft cap: the blocked path, which caps (SDPA refuses a cap)."""
    q, k, v = inputs(2, 300, 300, torch.float32, seed=10)
    mask = padded_causal_mask([0, 20], 300, 300)
    assert torch.equal(*sliced_and_sdpa(q, k, v, mask))
    q, k, v = inputs(1, 600, 600, torch.float32, seed=11)
    assert torch.equal(*sliced_and_sdpa(q, k, v, None))
    full = torch.ones(1, 1, 600, 600, dtype=torch.bool)
    assert torch.equal(*sliced_and_sdpa(q, k, v, full, causal=False))
    mod = module()
    capped = attention.sliced_sdpa(mod, q, k, v, None, scaling=DIM**-0.5, softcap=2.0)[0]
    blocked = attention.blocked_attention(mod, q, k, v, None, scaling=DIM**-0.5, softcap=2.0)[0]
    torch.testing.assert_close(capped, blocked)


def test_sliced_sdpa_in_bf16_is_no_further_from_fp32_than_sdpa_whole():
    q, k, v = inputs(2, 700, 760, torch.float32, seed=12)
    mask = padded_causal_mask([0, 45], 700, 760)
    ref = sliced_and_sdpa(q, k, v, mask)[1]
    ours, sdpa = sliced_and_sdpa(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    real = mask[:, 0].any(-1)
    err_ours = (ours.float() - ref)[real].abs().mean()
    err_sdpa = (sdpa.float() - ref)[real].abs().mean()
    assert ours.dtype == torch.bfloat16 and err_ours < 1.25 * err_sdpa, (err_ours, err_sdpa)


def test_a_model_on_the_sliced_path_gives_sdpas_logits_on_long_rows(monkeypatch):
    ours, sdpa = tiny_llama(attention.SLICED), tiny_llama("sdpa")
    assert ours.config._attn_implementation == attention.SLICED
    ids = torch.randint(3, 128, (2, 2 * attention.SDPA_BLOCK + 40), generator=torch.Generator().manual_seed(13))
    mask = torch.ones_like(ids)
    mask[1, :70] = 0
    with torch.inference_mode():
        b = sdpa(input_ids=ids, attention_mask=mask).logits
        calls = counted_sdpa(monkeypatch)
        a = ours(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-4, rtol=1e-4)
    assert len(calls) == 3 * ours.config.num_hidden_layers  # 552 queries: blocks of 256, 256 and 40


@pytest.mark.parametrize("amx", [True, False])
def test_the_attention_a_model_loads_with(amx, monkeypatch):
    """CPU: the sliced flash kernel in bf16 on AMX, the blocked attention otherwise (fp32, or no AMX);
    a soft-capped model never the flash kernel (SDPA refuses a cap); fast paths off or a GPU: SDPA, or
    eager where capped. gpt-oss eager everywhere: transformers refuses it SDPA (its attention sinks), and
    the kit's attention would hand the sinks to SDPA (training loaded it with SDPA and crashed)."""
    from transformers import Gemma2Config, GptOssConfig, LlamaConfig

    from kaggle_kit import hardware
    from kaggle_kit.models import attention_implementation

    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: amx)
    llama, gemma2 = LlamaConfig(), Gemma2Config()
    assert attention_implementation(llama, "cpu", True, "bfloat16") == (attention.SLICED if amx else attention.NAME)
    assert attention_implementation(llama, "cpu", True, "float32") == attention.NAME
    assert attention_implementation(gemma2, "cpu", True, "bfloat16") == attention.NAME
    assert attention_implementation(llama, "cpu", False, "bfloat16") == "sdpa"
    assert attention_implementation(gemma2, "cuda", True, "float16") == "eager"
    assert attention_implementation(llama, "cuda", True, "float16") == "sdpa"
    for device, fast in (("cpu", True), ("cpu", False), ("cuda", True)):
        assert attention_implementation(GptOssConfig(), device, fast, "bfloat16") == "eager"
