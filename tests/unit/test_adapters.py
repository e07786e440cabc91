"""Loading peft adapters (models.load_model): an adapter whose LoRA weights find no place in the model is
an error naming it, not a run on the base model's numbers (peft only warns and leaves those layers at B = 0)."""

from __future__ import annotations

import pytest
import torch

from kaggle_kit.errors import ConfigError
from kaggle_kit.hardware import detect
from kaggle_kit.models import demo_model_dir, load_model, load_tokenizer

from .. import tiny_models


def saved_adapter(family: str, folder):
    """A LoRA adapter (q and v projections, B drawn at random) on the tiny `family` model, saved to folder."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_models.build(family, load_tokenizer(demo_model_dir())), LoraConfig(target_modules=["q_proj", "v_proj"])
    )
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(folder)
    return str(folder)


def lora_b(model) -> list:
    return [p for n, p in model.named_parameters() if "lora_B" in n]


def test_an_adapter_of_another_model_class_is_an_error_naming_it(tmp_path):
    """Gemma 3 4B and up load as the vision-language class (text layers under model.language_model); an
    adapter trained on the text-only class names them model.layers. Each loads on its own class, and is
    an error on the other, first or second of several adapters."""
    profile = detect("float32", "cpu")
    vl, text = tiny_models.save("gemma3_vl", tmp_path), tiny_models.save("gemma3", tmp_path)
    vl_adapter, text_adapter = saved_adapter("gemma3_vl", tmp_path / "vl"), saved_adapter("gemma3", tmp_path / "text")
    # one-letter names too: peft reports another adapter's keys as missing wherever the name occurs in them
    for base, adapter in ((vl, vl_adapter), (text, text_adapter), (text, {"a": text_adapter, "y": text_adapter})):
        model, _ = load_model(str(base), profile, adapter=adapter)
        assert lora_b(model) and all(p.abs().sum() > 0 for p in lora_b(model))  # its weights, loaded
    for base, adapters, wrong in (
        (text, vl_adapter, vl_adapter),
        (vl, {"a": vl_adapter, "b": text_adapter}, text_adapter),
    ):
        with pytest.raises(ConfigError) as err:
            load_model(str(base), profile, adapter=adapters)
        assert wrong in str(err.value) and "trained on another model or model class" in str(err.value)
