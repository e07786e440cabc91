"""The model being trained: a base model (4-bit NF4 for QLoRA, or plain) with a peft LoRA adapter."""

from __future__ import annotations

import logging

log = logging.getLogger("kaggle_kit")


def build(cfg, profile):
    """(peft model, tokenizer) for a TrainConfig; trainable (LoRA) parameters are fp32.

    fp32 trainable parameters are what lets fp16 training on a T4 unscale its gradients (Kaggle's
    "Attempting to unscale FP16 gradients" error comes from fp16 trainable parameters).
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from ..hardware import guard_half
    from ..models import attention_implementation, device_map, load_config, load_tokenizer, resolve_model
    from ..templates import apply_chat_format

    path = resolve_model(cfg.model)
    config = load_config(path)
    profile = guard_half(profile, config.model_type)
    tok = apply_chat_format(load_tokenizer(path), cfg.chat_format)
    compute = getattr(torch, profile.compute_dtype)
    # training runs transformers' own attention: SDPA, or eager where scores are soft-capped (Gemma 2)
    attn = attention_implementation(config, profile.device, fast_paths=False)
    kw = dict(dtype=compute, local_files_only=True, attn_implementation=attn, **device_map(profile))
    if cfg.quant != "none":
        bnb = profile.quantization(cfg.quant)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, **kw)
        keep_4bit_layout(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    if cfg.quant != "none" and compute == torch.float16:
        # fp16 (T4): peft's recipe, norms / embeddings / lm_head upcast to fp32, or fp16 activations overflow
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    else:
        # bf16 has fp32's range: the base stays in its dtype and so do the activations. peft's fp32 upcast
        # would make every activation fp32 (the fp32 norm weights promote them): 2.5 GB saved for
        # backward at 4 x 512 tokens on SmolLM2 instead of half that.
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s (%s), LoRA r=%d on %s: %.2fM trainable of %.1fM",
        path.name,
        cfg.quant,
        cfg.lora_r,
        cfg.target_modules,
        n_train / 1e6,
        n_all / 1e6,
    )
    return model, tok


def keep_4bit_layout(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel; returns modules changed.

    On a CPU with AVX512-BF16, a Linear4bit's first no-grad forward in eval mode (our evaluation) repacks
    its weight in place for a faster inference kernel, and every later training forward computes
    slightly different numbers from it (SmolLM2: loss 2.75676 -> 2.75696 on one row). Training would
    then depend on whether an evaluation ran before a step, and a run resumed after a kill (no step-0
    evaluation in that process) would drift from the uninterrupted one. Training keeps one layout."""
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def optimizer(model, cfg, profile):
    """AdamW over the trainable parameters: bitsandbytes paged 8-bit on CUDA, plain torch on a CPU."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if profile.device == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def schedule(cfg, total_steps: int):
    """lr multiplier per optimizer step: linear warmup, then constant / linear decay / cosine decay."""
    import math

    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.scheduler == "constant":
            return 1.0
        done = (step - warmup) / max(1, total_steps - warmup)
        if cfg.scheduler == "linear":
            return max(0.0, 1.0 - done)
        return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))

    return factor
