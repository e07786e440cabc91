"""Sequence-classification heads: a linear `score` layer (classes x hidden) on the last position's final
hidden state, what transformers' AutoModelForSequenceClassification computes and many LMSYS solutions
trained with LoRA instead of reading label tokens.

The kit keeps the causal LM and adds the head beside its output layer: the hidden state the output layer
reads is the one the head reads, so the engine's prefix cache, TTA views, last-position pruning and
budget work unchanged. The head is trained with the LoRA weights and saved in the adapter as peft saves a
classification adapter (`task_type: SEQ_CLS`, `modules_to_save: [score]`, tensor
`base_model.model.score.weight`): plain transformers + peft load it into
AutoModelForSequenceClassification, and the kit loads such an adapter trained elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError

SCORE = "score"  # transformers' name of the head in Llama, Mistral, Qwen2, Gemma, Phi-3 ...ForSequenceClassification


def add_score(model, label_ids: list[int]) -> None:
    """Give a causal LM (before peft wraps it) an fp32 `score` head initialised from its output layer's rows
    of `label_ids`: at step 0 the head scores exactly as the label tokens do (the zero-shot start), where a
    randomly initialised head (transformers' default) starts from chance."""
    import torch

    rows = model.get_output_embeddings().weight[label_ids].detach().float()
    head = torch.nn.Linear(rows.shape[1], len(label_ids), bias=False, device=rows.device, dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(rows)
    setattr(model, SCORE, head)


def saved_classes(adapter) -> int | None:
    """The number of classes of the head an adapter folder holds; None for a plain LoRA adapter."""
    from safetensors import safe_open

    adapter = Path(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if SCORE not in (cfg.get("modules_to_save") or []) and cfg.get("task_type") != "SEQ_CLS":
        return None
    weights = adapter / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        key = next((k for k in f.keys() if k.endswith(f"{SCORE}.weight")), None)
        if key is None:
            raise ConfigError("adapter", f"{adapter} is a classification adapter without a '{SCORE}' weight")
        return f.get_slice(key).get_shape()[0]


def peft_config(adapter):
    """The adapter's peft config as the kit applies it to a causal LM: a classification adapter's task type
    read as CAUSAL_LM (the head is the kit's own, see module doc) with `score` among the modules to save."""
    from peft import PeftConfig

    cfg = PeftConfig.from_pretrained(str(adapter))
    if saved_classes(adapter):
        cfg.task_type = "CAUSAL_LM"
        cfg.modules_to_save = sorted({*(cfg.modules_to_save or []), SCORE})
    return cfg


def prepare_base(model, adapters: list) -> None:
    """Before peft loads `adapters` onto a causal LM: an empty `score` of the saved shape (peft fills it)."""
    import torch

    classes = {n for n in (saved_classes(a) for a in adapters) if n}
    if not classes:
        return
    if len(classes) > 1:
        raise ConfigError("adapter", f"classification heads of different sizes {sorted(classes)} cannot load together")
    weight = model.get_output_embeddings().weight
    head = torch.nn.Linear(weight.shape[1], classes.pop(), bias=False, device=weight.device, dtype=model.dtype)
    setattr(model, SCORE, head)


def head_weight(model):
    """The (classes, hidden) weight of the active adapter's classification head, or None (label tokens)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    score = getattr(base, SCORE, None)
    if score is None:
        return None
    copies = getattr(score, "modules_to_save", None)
    if copies is None:  # a bare head: training before peft wraps it, or a model of one's own
        return score.weight
    active = getattr(score, "active_adapter", None)
    active = active[0] if isinstance(active, (list, tuple)) else active
    return copies[active].weight if active in copies else None


def refuse_classifier(model, what: str) -> None:
    """Refuse a classification-head adapter for a task that reads the model's text (its head would be unused)."""
    if head_weight(model) is not None:
        name = getattr(model, "name_or_path", "the model")
        raise ConfigError("adapter", f"{name} carries a classification head, which scores labels; {what} reads text")


def mark_saved(folder) -> None:
    """Label a saved adapter with a head as transformers + peft expect a classification adapter."""
    path = Path(folder) / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["task_type"] = "SEQ_CLS"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
