"""last_position_only (infer/fast/last_position.py) on a tiny randomly initialised Llama (no files)."""

import pytest
import torch

from kaggle_kit.infer.fast.last_position import PER_POSITION, last_layer, last_position_only

from ..conftest import tiny_llama


def batch():
    ids = torch.randint(3, 128, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :6], mask[2, :19] = 0, 0  # left padding: every row ends at the last column
    return {"input_ids": ids, "attention_mask": mask}


def positions_seen(model):
    """{module name: positions it computed per call}, for the last layer's modules: an output of one
    position broadcast over the sequence has stride 0 there."""
    seen, hooks = {}, []
    layer = last_layer(model)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.down_proj"):
        hook = layer.get_submodule(name).register_forward_hook(
            lambda m, a, o, name=name: seen.setdefault(name, []).append(1 if o.stride(1) == 0 else o.shape[1])
        )
        hooks.append(hook)
    return seen, hooks


def test_last_position_logits_are_unchanged_and_the_last_layer_ran_on_one_position():
    model = tiny_llama(num_hidden_layers=3)
    x = batch()
    seen, hooks = positions_seen(model)
    with torch.inference_mode():
        full = model(**x).logits[:, -1]
        with last_position_only(model) as names:
            pruned = model(**x, logits_to_keep=1).logits[:, -1]
    for h in hooks:
        h.remove()
    assert names == list(PER_POSITION)
    torch.testing.assert_close(pruned, full, atol=1e-5, rtol=1e-5)
    assert seen["self_attn.k_proj"] == [40, 40]  # keys and values of every position still made
    assert seen["self_attn.q_proj"] == [40, 1] and seen["self_attn.o_proj"] == [40, 1]
    assert seen["mlp.down_proj"] == [40, 1]


def test_modules_are_restored_after_the_block_and_after_an_error():
    model = tiny_llama(num_hidden_layers=3)
    x = batch()
    with torch.inference_mode():
        before = model(**x).logits
        with pytest.raises(RuntimeError, match="boom"):
            with last_position_only(model):
                raise RuntimeError("boom")
        with last_position_only(model):
            model(**x)
        after = model(**x).logits
    layer = last_layer(model)
    assert all("forward" not in layer.get_submodule(n).__dict__ for n in PER_POSITION)
    torch.testing.assert_close(after, before, atol=0, rtol=0)  # every position right again


def test_a_lora_wrapped_model_is_pruned_through_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_llama(num_hidden_layers=3), LoraConfig(r=4, target_modules=["q_proj", "o_proj", "down_proj"])
    )
    with torch.no_grad():  # a LoRA B of zeros would change nothing; make the adapter count
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    x = batch()
    with torch.inference_mode():
        full = model(**x).logits[:, -1]
        with last_position_only(model) as names:
            pruned = model(**x, logits_to_keep=1).logits[:, -1]
    assert names == list(PER_POSITION)
    torch.testing.assert_close(pruned, full, atol=1e-5, rtol=1e-5)


def test_a_model_without_decoder_layers_is_left_alone():
    lin = torch.nn.Linear(4, 4)
    with last_position_only(lin) as names:
        out = lin(torch.ones(2, 3, 4))
    assert names == [] and out.shape == (2, 3, 4)
