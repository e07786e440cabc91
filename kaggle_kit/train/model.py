"""The model being trained: a base model (4-bit NF4 for QLoRA, or plain) with a peft LoRA adapter."""

from __future__ import annotations

import logging

log = logging.getLogger("kaggle_kit")


def tokenizer(cfg):
    """The tokenizer a TrainConfig trains with (its chat format applied): loaded alone, so the data is
    built and checked before the model loads."""
    from ..models import load_tokenizer, resolve_model
    from ..templates import apply_chat_format

    return apply_chat_format(load_tokenizer(resolve_model(cfg.model)), cfg.chat_format, cfg.chat_template_kwargs)


def build(cfg, profile, label_ids: list[int] | None = None, tok=None):
    """(peft model, tokenizer) for a TrainConfig (`tok`: tokenizer(cfg) when not given); trainable (LoRA)
    parameters are fp32, the base frozen. With cfg.head 'classifier' the model also carries a trainable
    head over the label tokens `label_ids` (heads.py).

    fp32 trainable parameters are what lets fp16 training on a T4 unscale its gradients (Kaggle's
    "Attempting to unscale FP16 gradients" error comes from fp16 trainable parameters).
    """
    import torch
    from peft import get_peft_model

    from ..hardware import guard_half
    from ..heads import add_score
    from ..infer.fast.output_layer import contiguous_head
    from ..infer.fast.packed import keep_4bit_layout
    from ..models import attention_implementation, device_map, load_config, pretrained, quiet_peft, resolve_model
    from . import shared_head
    from .fast import fast_paths

    path = resolve_model(cfg.model)
    config = load_config(path)
    profile = guard_half(profile, config.model_type)
    tok = tokenizer(cfg) if tok is None else tok
    compute = getattr(torch, profile.compute_dtype)
    # training runs transformers' own attention: SDPA, or eager where scores are soft-capped (Gemma 2)
    attn = attention_implementation(config, profile.device, fast_paths=False)
    kw = dict(dtype=compute, local_files_only=True, attn_implementation=attn, **device_map(profile))
    if cfg.quant != "none":
        bnb = profile.quantization(cfg.quant)
        model = pretrained(path, quantization_config=bnb, **kw)
        keep_4bit_layout(model)  # one layout in training (infer/fast/packed.py)
    else:
        model = pretrained(path, **kw)
    for p in model.parameters():
        p.requires_grad_(False)
    if compute == torch.float16:
        upcast_norms(model)
    # bf16 has fp32's range: the base stays in its dtype and so do the activations (peft's
    # prepare_model_for_kbit_training would upcast every non-quantised weight to fp32: 2.5 GB saved for
    # backward at 4 x 512 tokens on SmolLM2 instead of half that, and +3.7 GB for Gemma-2-9B's embedding)
    if checkpointing(cfg, profile):
        # non-reentrant: works with frozen inputs and peft, and is what torch recommends
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    if cfg.head == "classifier":
        add_score(model, label_ids)
    lora = _lora_config(cfg, model)
    with quiet_peft():
        model = get_peft_model(model, lora)
    contiguous_head(model)  # the frozen output layer's product on a slice (an evaluation's metric runs)
    fast = "fast paths off"
    if cfg.fast_paths:  # one addmm per LoRA layer; norms keep their input, not fp32 copies, for a closed-form backward
        fast = fast_paths(model, layers_checkpointed=checkpointing(cfg, profile))
        if not checkpointing(cfg, profile) and shared_head.enable(model):
            fast += ", the tokens a batch's rows start with run once"
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s (%s), LoRA r=%d on %s: %.2fM trainable of %.1fM; %s",
        *(path.name, cfg.quant, cfg.lora_r, cfg.target_modules, n_train / 1e6, n_all / 1e6),
        fast,
    )
    return model, tok


# the submodules a multimodal checkpoint (Gemma 3 4B and up, Qwen-VL, ...) holds beside its text model
TOWERS = (
    "vision_tower",
    "vision_model",
    "visual",
    "multi_modal_projector",
    "audio_tower",
    "embed_vision",
    "embed_audio",
)


def _lora_config(cfg, model):
    from peft import LoraConfig

    from ..heads import SCORE

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        exclude_modules=left_out(model) if cfg.target_modules == "all-linear" else None,
        task_type="CAUSAL_LM",
        modules_to_save=[SCORE] if cfg.head == "classifier" else None,  # trained in full, saved with the adapter
    )


def left_out(model) -> str | None:
    """A pattern of the module names 'all-linear' must not adapt, for peft's exclude_modules; None if none:
    - a multimodal model's other towers (TOWERS), which text rows never run (Gemma 3's SigLIP tower: LoRA
      weights, gradients' buffers and optimiser state for nothing);
    - linear layers a model defines with a forward of its own, which return something else than a product
      (Llama 4's router: scores and logits, a tuple on which peft's LoRA layer fails)."""
    import re

    import torch

    towers = sorted({part for name, _ in model.named_modules() for part in name.split(".") if part in TOWERS})
    own = [
        re.escape(name)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and type(m).__module__.startswith("transformers.")
        and type(m).forward is not torch.nn.Linear.forward
    ]
    parts = ([rf"(.*\.)?({'|'.join(towers)})(\..*)?"] if towers else []) + own
    return "|".join(parts) or None


def checkpointing(cfg, profile) -> bool:
    """cfg.gradient_checkpointing, or where unset: on for a GPU with less than 24 GB (a T4's 15 GB holds a
    9B model's 4-bit weights but not 2,048 tokens of its activations), off on a CPU or a larger GPU."""
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    if profile.device != "cuda":
        return False
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory < 24 * 2**30


def upcast_norms(model) -> int:
    """fp16 training (T4): the norm weights (1-D parameters) in fp32, the only fp16 weights whose rounding
    the loss notices; the embedding and projections stay fp16 under autocast (peft's recipe upcast them
    all: Gemma-2-9B's 256k x 3,584 tied embedding alone is 3.7 GB in fp32). Returns tensors upcast."""
    import torch

    done = 0
    for p in model.parameters():
        if p.ndim == 1 and p.dtype == torch.float16:
            p.data = p.data.float()
            done += 1
    return done


def optimizer(model, cfg, profile):
    """AdamW over the trainable parameters: bitsandbytes paged 8-bit on CUDA, plain torch on a CPU."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if profile.device == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def schedule(cfg, optimizer, total_steps: int):
    """transformers' scheduler of cfg.scheduler (constant / linear / cosine) after a linear warmup of
    warmup_ratio x total_steps."""
    from transformers import get_scheduler

    warmup = int(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
