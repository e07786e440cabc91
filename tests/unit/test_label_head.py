"""The fp32 label head on tiny randomly initialised transformers models (no files, no download)."""

import pytest
import torch

from kaggle_kit.infer.fast.label_head import LabelHead


def tiny(kind: str, dtype):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    size = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    size.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**size, tie_word_embeddings=False))
    else:  # Gemma 2 soft-caps its logits: 30 tanh(x / 30) after the output layer
        cap = None if kind == "gemma2-uncapped" else 30.0
        model = Gemma2ForCausalLM(Gemma2Config(**size, final_logit_softcapping=cap))
    with torch.no_grad():  # logits of a few tens, where rounding and a soft cap both show
        model.get_output_embeddings().weight.normal_(0, 2.0)
    return model.to(dtype).eval()


def assert_keeps_own_logits(model):
    """The head is inactive for `model` and gives the model's own label logits, as fp32."""
    head = LabelHead(model, [3, 7])
    assert not head.active
    x = torch.tensor([[5, 9, 2]])
    with torch.inference_mode():
        with head.capture():
            own = model(input_ids=x).logits
    assert torch.equal(head.logits(own), own[:, -1].float()[:, [3, 7]])


def test_label_logits_are_the_fp32_product_of_the_hidden_state_the_model_rounds():
    model = tiny("llama", torch.bfloat16)
    head = LabelHead(model, [3, 7, 11])
    assert head.active
    x = torch.tensor([[5, 9, 2, 17, 4]])
    with torch.inference_mode():
        with head.capture():
            out = model(input_ids=x, output_hidden_states=True)
        logits = head.logits(out.logits)
        assert out.logits.shape == (1, 0, 128)  # the full-vocabulary product was skipped
        out.logits = model(input_ids=x).logits  # the model's own, without the head
    hidden = out.hidden_states[-1][:, -1].float()
    w = model.lm_head.weight[[3, 7, 11]].float()
    assert logits.dtype == torch.float32
    assert torch.equal(logits, hidden @ w.T)
    # the model's own logits are these, rounded to bf16; they differ in the bits bf16 drops
    own = out.logits[:, -1, [3, 7, 11]]
    assert torch.allclose(logits, own.float(), rtol=2**-8, atol=1e-6)
    assert not torch.equal(logits, own.float())


@pytest.mark.parametrize("kind,dtype", [("gemma2", torch.bfloat16), ("llama", torch.float32)])
def test_model_logits_are_kept_where_fp32_would_not_reproduce_them_or_change_nothing(kind, dtype):
    """A soft-capped model (Gemma 2) gives other logits than its output layer's product, and an fp32
    model's logits are already fp32: both keep the model's own logits."""
    model = tiny(kind, dtype)
    assert_keeps_own_logits(model)


def test_the_same_gemma2_without_its_soft_cap_gets_the_fp32_head():
    assert LabelHead(tiny("gemma2-uncapped", torch.bfloat16), [3, 7]).active


def test_a_model_whose_logits_bypass_the_output_layers_forward_keeps_its_own_logits():
    """No hook fires when a model multiplies by the output weight itself: the check says so instead of
    failing, and the head falls back to the model's logits."""
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class Bypass(LlamaForCausalLM):
        def forward(self, input_ids=None, **kwargs):
            hidden = self.model(input_ids=input_ids).last_hidden_state
            return CausalLMOutputWithPast(logits=torch.nn.functional.linear(hidden, self.lm_head.weight))

    base = tiny("llama", torch.bfloat16)
    model = Bypass(base.config).to(torch.bfloat16).eval()
    model.load_state_dict(base.state_dict())
    assert_keeps_own_logits(model)
