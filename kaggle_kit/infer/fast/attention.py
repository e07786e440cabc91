"""CPU attention for prompt-length queries: blocked matmul + softmax instead of torch's flash kernel.

torch's CPU flash kernel splits keys into blocks of 512, so on the 100-600-token rows of choice scoring
a row is one block: the causal mask saves nothing, and its small per-head GEMMs run at 90-120 GFLOP/s
(bench/infer_bench.py's profile: a quarter of a bf16 forward). Here the queries are cut into blocks of
`QUERY_BLOCK`, each block meets only the keys it may see (causal: the first kv_len - q_len + end), and a
key/value head's query heads are stacked into one matrix so no key is copied. Precision is the flash
kernel's: q.k products in fp32 (bf16 x bf16 is exact in fp32), softmax in fp32, probabilities rounded to
the value dtype for the second GEMM. Gemma 2's soft-capped scores are capped here as its eager code caps
them (tanh(s / cap) * cap before the mask): transformers' SDPA refuses a cap, so a capped layer never goes
there. Anything else (decode steps, GPUs, position bias, dropout) goes to transformers' own SDPA path, or
to an eager product where a cap is set; a model whose class refuses SDPA (gpt-oss's attention sinks) never
comes here (models.attention_implementation). Without a mask, q_len queries before kv_len keys are the
last q_len positions, on both paths (Gemma 4's KV-shared layers drop the others after their masks are
built), where SDPA's own causal flag would align them with the first keys. A layer whose `is_causal` is true
is taken at its word: keys after a query block are not scored even where a mask would show them (no
bidirectional spans, as image tokens have in some vision-language models).

On a CPU with AMX tiles torch's flash kernel runs bf16 products there and beats the fp32 products above,
but given a mask (left padding, a cached prefix) it scores every key for every query: a long row pays
the whole square for half of it. `sliced_sdpa` (registered as `kit_cpu_sliced`) hands it the queries
`SDPA_BLOCK` at a time, each with the keys up to its last query and its slice of the mask: the same
kernel on the same numbers, the keys it would have hidden not scored.
"""

from __future__ import annotations

import functools
import weakref

NAME = "kit_cpu"
SLICED = "kit_cpu_sliced"
SDPA_BLOCK = 256  # AMX, bf16, SmolLM2's heads: 1,000-token rows 9.0 -> 5.7 ms a layer; 240-token rows lose
QUERY_BLOCK = 48  # 8 rows x 190 queries, bf16, 2 Zen 4 cores: 48 -> 4.9 ms a layer, 95 -> 5.6, 190 -> 6.7; flash 9.0
MIN_QUERIES = 16  # decode steps (1 query) stay with SDPA, where transformers already packs a head group's queries
_BIASES: dict = {}  # (id(mask), shape...) -> (weak reference to the mask, its bias): _shared_bias
LOWEST = -3.4028234663852886e38  # float32 min, not -inf: a fully masked (padding) query row stays NaN-free


def register(sliced: bool = False) -> str:
    """Make NAME and SLICED transformers attention implementations (their masks the SDPA boolean mask);
    returns SLICED if `sliced`, else NAME. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, blocked_attention)
    AttentionInterface.register(SLICED, sliced_sdpa)
    for name in (NAME, SLICED):
        AttentionMaskInterface.register(name, sdpa_mask)
    return SLICED if sliced else NAME


def sliced_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' SDPA path, queries SDPA_BLOCK at a time with the keys up to each block's last query
    where a mask is given and the layer is causal, for rows of 2 x SDPA_BLOCK queries and more; SDPA
    whole otherwise (as for decode steps, dropout or odd shapes: see _delegate); a soft-capped layer, which
    SDPA refuses, as blocked_attention takes it."""
    import torch

    if kwargs.get("softcap") is not None:
        return blocked_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = _causal(module, kwargs)
    if (
        _delegate(query, key, value, kwargs, dropout)
        or attention_mask is None  # SDPA's own causal flag skips the hidden keys already
        or attention_mask.shape[-2] != q_len
        or not causal
        or q_len < 2 * SDPA_BLOCK
    ):
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    offset, parts = kv_len - q_len, []
    for start in range(0, q_len, SDPA_BLOCK):
        end = min(start + SDPA_BLOCK, q_len)
        k, v, m = key[:, :, : offset + end], value[:, :, : offset + end], attention_mask[..., start:end, : offset + end]
        parts.append(_sdpa(module, query[:, :, start:end], k, v, m, dropout, scaling, **kwargs)[0])
    return torch.cat(parts, dim=1), None


def _sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' SDPA path, where no mask and fewer queries than keys (q_len > 1) gets the causal mask of
    the last q_len positions: SDPA's causal flag would align the queries with the first keys. transformers
    hands such a call only where a model dropped queries after building its masks (Gemma 4's KV-shared
    layers under an integer logits_to_keep), and keeps SDPA itself out of that case."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and 1 < q_len < kv_len and _causal(module, kwargs):
        attention_mask = _causal_mask(q_len, kv_len, kv_len - q_len, query.device)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def _causal(module, kwargs: dict) -> bool:
    """Whether the layer's attention is causal: the call's `is_causal` where given, else the module's."""
    return getattr(module, "is_causal", True) if kwargs.get("is_causal") is None else kwargs["is_causal"]


def _delegate(query, key, value, kwargs: dict, dropout: float) -> bool:
    """True when the blocked path does not apply and SDPA (or, for a capped layer, eager) should run."""
    odd = ("s_aux", "position_bias", "cache", "output_attentions")
    capped = kwargs.get("softcap") is not None
    return (
        query.device.type != "cpu"
        or (query.shape[2] < MIN_QUERIES and not capped)  # SDPA cannot cap: the blocked path takes any length
        or dropout > 0
        or not query.shape[-1] == key.shape[-1] == value.shape[-1]  # e.g. latent attention's head sizes
        or query.shape[1] % key.shape[1] != 0
        or any(kwargs.get(k) is not None and kwargs.get(k) is not False for k in odd)
    )


def blocked_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention signature: query (B, H, Q, D), key/value (B, Hkv, K, D), mask (B, 1, Q, K)
    boolean (True = attend), float (additive) or None (causal); returns ((B, Q, H, D), None)."""
    import torch

    softcap = kwargs.get("softcap")
    if _delegate(query, key, value, kwargs, dropout):
        if softcap is not None:
            return eager_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    b, h, q_len, d = query.shape
    hkv, kv_len = key.shape[1], key.shape[2]
    g = h // hkv
    scale = d**-0.5 if scaling is None else scaling
    causal = _causal(module, kwargs)
    offset = kv_len - q_len  # queries are the last q_len positions, with or without a mask
    bias = _shared_bias(attention_mask, causal, q_len, kv_len, offset, query.device)
    qf = (query.float() * scale).view(b, hkv, g, q_len, d)
    kt = key.float().transpose(-1, -2)
    out = torch.empty(b, q_len, hkv, g, d, dtype=query.dtype, device=query.device)
    for start in range(0, q_len, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, q_len)
        n, keys = end - start, (offset + end if causal else kv_len)
        s = torch.matmul(qf[:, :, :, start:end].reshape(b, hkv, g * n, d), kt[..., :keys]).view(b, hkv, g, n, keys)
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        if bias is not None:
            s.add_(bias[:, :, None, start:end, :keys])
        p = torch.softmax(s, dim=-1).to(value.dtype).view(b, hkv, g * n, keys)
        out[:, start:end] = torch.matmul(p, value[:, :, :keys]).view(b, hkv, g, n, d).permute(0, 3, 1, 2, 4)
    return out.view(b, q_len, h, d), None


def eager_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' eager product (the one Gemma 2 ships: scores, soft cap, additive mask, fp32 softmax),
    taking the boolean or missing mask this implementation is given; for what the blocked path does not
    cover in a capped layer (dropout in training, odd head sizes)."""
    import torch

    b, h, q_len, d = query.shape
    hkv, kv_len = key.shape[1], key.shape[2]
    scale = d**-0.5 if scaling is None else scaling
    causal = _causal(module, kwargs)
    bias = _bias(attention_mask, causal, q_len, kv_len, kv_len - q_len, query.device)
    k = key.repeat_interleave(h // hkv, dim=1)
    v = value.repeat_interleave(h // hkv, dim=1)
    s = torch.matmul(query, k.transpose(2, 3)) * scale
    if kwargs.get("softcap") is not None:
        s = torch.tanh(s / kwargs["softcap"]) * kwargs["softcap"]
    s = s.float() if bias is None else s.float() + bias  # fp32: the bias's LOWEST is -inf in half precision
    p = torch.softmax(s, dim=-1).to(query.dtype)
    p = torch.nn.functional.dropout(p, p=dropout, training=getattr(module, "training", False))
    return torch.matmul(p, v).transpose(1, 2).contiguous(), None


def _shared_bias(attention_mask, causal: bool, q_len: int, kv_len: int, offset: int, device):
    """_bias, built once a forward: the layers of a forward share their mask object (or one per layer
    type, as sliding-window models have), so its bias is kept while that mask lives and handed on."""
    import torch

    if attention_mask is None:
        return _causal_bias(causal, q_len, kv_len, offset, str(device))
    if attention_mask.dtype != torch.bool:  # additive: used as it is (a kept copy would keep the mask alive)
        return _bias(attention_mask, causal, q_len, kv_len, offset, device)
    key = (id(attention_mask), causal, q_len, kv_len, offset)
    hit = _BIASES.get(key)
    if hit is not None and hit[0]() is attention_mask:
        return hit[1]
    bias = _bias(attention_mask, causal, q_len, kv_len, offset, device)
    _BIASES[key] = (weakref.ref(attention_mask), bias)
    weakref.finalize(attention_mask, _BIASES.pop, key, None)  # the entry dies with its mask
    return bias


@functools.lru_cache(maxsize=2)
def _causal_bias(causal: bool, q_len: int, kv_len: int, offset: int, device: str):
    """_bias without a mask, by shape (a batch of unpadded rows: the same few shapes every layer)."""
    return _bias(None, causal, q_len, kv_len, offset, device)


def _causal_mask(q_len: int, kv_len: int, offset: int, device):
    """(1, 1, Q, K) boolean: query i (position offset + i) sees key j where j <= offset + i."""
    import torch

    seen = torch.arange(kv_len, device=device) <= torch.arange(offset, offset + q_len, device=device)[:, None]
    return seen[None, None]


def _bias(attention_mask, causal: bool, q_len: int, kv_len: int, offset: int, device):
    """(B|1, 1, Q, K) fp32 to add to the scores: 0 where a query may look, LOWEST where not (adding it
    is 0.6 ms a layer faster than masked_fill_ with a broadcast boolean mask); None when nothing is hidden."""
    import torch

    if attention_mask is None:
        if not causal:
            return None
        attention_mask = _causal_mask(q_len, kv_len, offset, device)
    if attention_mask.dtype != torch.bool:  # already additive
        return attention_mask.float()
    return torch.where(attention_mask, 0.0, LOWEST)
