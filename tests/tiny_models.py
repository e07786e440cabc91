"""Tiny randomly initialised models of the families Kaggle winners run, saved as model folders with the
demo model's tokenizer, for exactness tests (tests/integration/test_families.py) and the GPU check
(bench/gpu_check.sh). Nothing is downloaded; a folder is a few MB.

Each config keeps what makes its family differ: Gemma 2's soft-capped attention and logits and its
alternating sliding windows, Mistral's sliding window on every layer, Qwen2's q/k/v biases, Phi-3's fused
qkv and gate_up projections, Gemma 3's QK-norm and local/global layers, Llama's grouped-query attention,
Qwen3's q/k norms on a Llama body, Qwen3-MoE's routed experts (the base of many 2025 winners), gpt-oss's
attention sinks (transformers runs them eager only), experts and alternating windows, Gemma 4's KV-shared
layers (the last layers read earlier layers' keys and values; transformers drops their other queries under
an integer logits_to_keep) and per-layer embeddings, Qwen3.5's linear-attention (gated delta) layers
between full-attention ones, Gemma 3's vision-language class (its text model inside a wrapper), and
DeepSeek-V3's multi-head latent attention (keys and values through a low-rank projection, a rotary part
apart, values narrower than keys) with routed experts after a dense first layer.
Windows are small (WINDOW tokens) so that test rows fall on both sides of them. Weights are drawn larger
than the families' own initialisers so that attention scores reach the soft cap.

    python tests/tiny_models.py OUT_DIR [family ...]   # writes OUT_DIR/<family>/
"""

from __future__ import annotations

import sys
from pathlib import Path

WINDOW = 64  # sliding window of the tiny configs: the chat template's head (~30 tokens) fits, long rows do not
SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)


def _configs():
    from transformers import (
        DeepseekV3Config,
        Gemma2Config,
        Gemma3TextConfig,
        Gemma4TextConfig,
        GptOssConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3_5TextConfig,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW, initializer_range=0.2)
    gemma3 = dict(gemma, layer_types=["sliding_attention"] * 3 + ["full_attention"])
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    windows = dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"] * 2)
    mla = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
    # as many key heads as query heads, as DeepSeek-V3's own config: transformers repeats them otherwise
    mla.update(num_key_value_heads=4, n_group=1, topk_group=1, first_k_dense_replace=1, initializer_range=0.2)
    gemma4 = dict(head_dim=16, initializer_range=0.2, hidden_size_per_layer_input=8)
    linear = dict(linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4)
    linear["layer_types"] = ["linear_attention", "full_attention"] * 2
    return {
        "llama": (LlamaConfig, {}),
        "gemma2": (Gemma2Config, dict(gemma, attn_logit_softcapping=2.0, final_logit_softcapping=5.0)),
        "mistral": (MistralConfig, dict(sliding_window=WINDOW, head_dim=16)),
        "qwen2": (Qwen2Config, {}),
        "phi3": (Phi3Config, dict(sliding_window=None)),
        "gemma3": (Gemma3TextConfig, gemma3),
        "qwen3": (Qwen3Config, dict(head_dim=16)),
        "qwen3_moe": (Qwen3MoeConfig, dict(moe, head_dim=16)),
        "gpt_oss": (GptOssConfig, dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, **windows)),
        # the last two layers read the keys and values of the first two; per-layer embeddings (PLE) of the vocabulary
        "gemma4": (Gemma4TextConfig, dict(gemma4, global_head_dim=32, num_kv_shared_layers=2, **windows)),
        "qwen3_5": (Qwen3_5TextConfig, dict(head_dim=16, **linear)),
        # Gemma-3-4B and up load as the vision-language class (a SigLIP tower beside the text model)
        "gemma3_vl": (_gemma3_vision_language, gemma3),
        "deepseek_v3": (
            DeepseekV3Config,
            dict(mla, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
        ),
    }


def _gemma3_vision_language(**text):
    """A Gemma3Config of the text model `text` with a one-layer vision tower (what AutoModelForCausalLM builds
    for the gemma-3-4b/12b/27b checkpoints: Gemma3ForConditionalGeneration)."""
    from transformers import Gemma3Config

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    ids = {k: text[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    return Gemma3Config(text_config=text, vision_config=dict(vision, patch_size=14), mm_tokens_per_image=4, **ids)


FAMILIES = ("llama", "gemma2", "mistral", "qwen2", "phi3", "gemma3")
FAMILIES += ("qwen3", "qwen3_moe", "gpt_oss", "gemma4", "qwen3_5", "gemma3_vl", "deepseek_v3")  # the 2025-2026 bases


def build(family: str, tokenizer):
    """A randomly initialised (seed 0) causal LM of `family` sized for tests, vocabulary from `tokenizer`."""
    import torch
    from transformers import AutoModelForCausalLM

    cls, extra = _configs()[family]
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if "hidden_size_per_layer_input" in extra:  # Gemma 4's per-layer embeddings: of the same vocabulary
        extra = dict(extra, vocab_size_per_layer_input=len(tokenizer))
    config = cls(**{**SIZE, **extra}, **ids)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def save(family: str, out: Path) -> Path:
    """Write the tiny `family` model and the demo tokenizer to out/<family>/ (once); returns the folder."""
    from kaggle_kit.models import demo_model_dir, load_tokenizer

    folder = Path(out) / family
    if (folder / "config.json").is_file():
        return folder
    tok = load_tokenizer(demo_model_dir())
    build(family, tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    target = Path(sys.argv[1])
    for name in sys.argv[2:] or FAMILIES:
        print(save(name, target))
