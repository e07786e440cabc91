"""pack_linears (infer/fast/packed.py) on a tiny randomly initialised Llama (no files)."""

import torch

from kaggle_kit.hardware import onednn_has_bf16
from kaggle_kit.infer.fast.packed import pack_linears

from ..conftest import tiny_llama

# oneDNN's bf16 kernels need AVX512 (or AVX-NE-CONVERT); on an AVX2-only CPU nothing is packed
LAYERS = 2 * 7 if onednn_has_bf16() else 0


def test_packed_bf16_linears_give_the_same_logits():
    model = tiny_llama(num_hidden_layers=2).to(torch.bfloat16)
    x = torch.randint(3, 128, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(input_ids=x).logits
        packed = pack_linears(model)
        after = model(input_ids=x).logits
    assert packed == LAYERS  # q, k, v, o, gate, up, down a layer; not lm_head
    assert "forward" not in model.lm_head.__dict__
    assert ("forward" in model.model.layers[0].mlp.down_proj.__dict__) == bool(LAYERS)
    torch.testing.assert_close(after, before)  # bf16 tolerances: a CPU's two oneDNN paths may round apart


def test_fp32_and_lora_matrices_are_not_packed():
    from peft import LoraConfig, get_peft_model

    assert pack_linears(tiny_llama()) == 0  # fp32 weights: only bf16 ones are packed
    model = get_peft_model(tiny_llama().to(torch.bfloat16), LoraConfig(r=4, target_modules=["q_proj"])).eval()
    x = torch.randint(3, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(input_ids=x).logits
        assert pack_linears(model) == LAYERS  # the LoRA-wrapped q_proj's base layer, not lora_A / lora_B
        after = model(input_ids=x).logits
    torch.testing.assert_close(after, before)


def test_4bit_layers_keep_the_layout_training_computes_with(tmp_path):
    """keep_4bit_layout: an inference forward of a Linear4bit dequantises to bf16 and takes one bf16
    product, as training's forward does, and leaves the weight as it is; bitsandbytes alone repacks it
    in place for its CPU kernel on an AVX512-BF16 CPU (and then rounds otherwise)."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kaggle_kit.infer.fast.packed import keep_4bit_layout

    # widths that are whole 64-value blocks, as real models' are (bitsandbytes' repack assumes them)
    tiny_llama(hidden_size=128, intermediate_size=256, num_attention_heads=4).save_pretrained(tmp_path)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)

    def load():
        model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=nf4, dtype=torch.bfloat16)
        return model.eval(), [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]

    model, layers = load()
    assert len(layers) == 2 * 7
    flagged = sum(m.support_avx512bf16_for_cpu for m in layers)  # 14 on an AVX512-BF16 CPU, else 0
    assert keep_4bit_layout(model) == flagged and not any(m.support_avx512bf16_for_cpu for m in layers)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    layer = layers[0]  # q_proj: 128 -> 128
    before = layer.weight.data.clone()
    with torch.inference_mode():
        got = layer(x)
        w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
        assert torch.equal(got, torch.nn.functional.linear(x, w))
    assert torch.equal(layer.weight.data, before)
    if flagged:  # what it prevents: the first inference forward repacks the weight in place
        _, plain = load()
        with torch.inference_mode():
            plain[0](x)
        assert plain[0].weight.data.shape != before.shape or not torch.equal(plain[0].weight.data, before)
