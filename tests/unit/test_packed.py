"""pack_linears (infer/fast/packed.py) on a tiny randomly initialised Llama (no files)."""

import torch

from kaggle_kit.infer.fast.packed import pack_linears

from ..conftest import tiny_llama


def test_packed_bf16_linears_give_the_same_logits():
    model = tiny_llama(num_hidden_layers=2).to(torch.bfloat16)
    x = torch.randint(3, 128, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(input_ids=x).logits
        packed = pack_linears(model)
        after = model(input_ids=x).logits
    assert packed == 2 * 7  # q, k, v, o, gate, up, down a layer; not lm_head
    assert "forward" not in model.lm_head.__dict__
    assert "forward" in model.model.layers[0].mlp.down_proj.__dict__
    torch.testing.assert_close(after, before)  # bf16 tolerances: a CPU's two oneDNN paths may round apart


def test_fp32_and_lora_matrices_are_not_packed():
    from peft import LoraConfig, get_peft_model

    assert pack_linears(tiny_llama()) == 0  # fp32 weights: only bf16 ones are packed
    model = get_peft_model(tiny_llama().to(torch.bfloat16), LoraConfig(r=4, target_modules=["q_proj"])).eval()
    x = torch.randint(3, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(input_ids=x).logits
        assert pack_linears(model) == 2 * 7  # the LoRA-wrapped q_proj's base layer, not lora_A / lora_B
        after = model(input_ids=x).logits
    torch.testing.assert_close(after, before)
