"""Training's fast paths (kaggle_kit/train/fast.py) against what they replace, on tiny randomly initialised
models: the fused LoRA forward against peft's own (fp32: the same loss and gradients to fp32 rounding; a
4-bit base; dropout; the cases it leaves to peft), and the closed-form norms against the norms' plain
autograd (the same forward bit for bit, the gradients to rounding, fewer fp32 bytes kept), and the last
layer run on the labelled positions only against the whole layer (the same loss and gradients), and the
gated MLPs that recompute their activation against the MLP's own forward (bit for bit, fewer bytes kept)."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

from kaggle_kit.train import data
from kaggle_kit.train.fast import (
    closed_form_norms,
    fast_paths,
    fused_lora,
    gated_mlps,
    last_layer_on_labels,
    unmasked_padding,
)

SIZE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def tiny(family: str = "llama", dtype=torch.float32):
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    torch.manual_seed(0)
    if family == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**SIZE, num_key_value_heads=2, head_dim=16)).to(dtype)
    if family == "qwen3_moe":
        moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
        return Qwen3MoeForCausalLM(Qwen3MoeConfig(**SIZE, num_key_value_heads=2, head_dim=16, **moe)).to(dtype)
    if family == "phi3":
        return Phi3ForCausalLM(Phi3Config(**SIZE, num_key_value_heads=2, pad_token_id=0)).to(dtype)
    if family == "gemma3":
        cfg = Gemma3TextConfig(**SIZE, num_key_value_heads=2, head_dim=16, sliding_window=8)
        return Gemma3ForCausalLM(cfg).to(dtype)
    return LlamaForCausalLM(LlamaConfig(**SIZE, num_key_value_heads=2)).to(dtype)


def with_lora(model, alpha: int = 12, dropout: float = 0.0):
    """peft LoRA r=8 on every linear layer, B drawn at random (peft starts it at zero: no LoRA term)."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=8, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def ids():
    torch.manual_seed(2)
    return torch.randint(3, 96, (2, 12))


def loss_and_grads(model, x, seed: int = 3):
    torch.manual_seed(seed)  # the same dropout masks in both runs
    model.zero_grad(set_to_none=True)
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, **tol):
    (logits_a, grads_a), (logits_b, grads_b) = a, b
    torch.testing.assert_close(logits_a, logits_b, **tol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], **tol)


@pytest.mark.parametrize("alpha, dropout", [(16, 0.0), (12, 0.0), (12, 0.2)])  # scale 2, scale 1.5, dropout
def test_fused_lora_gives_pefts_loss_and_gradients(alpha, dropout):
    plain = with_lora(tiny(), alpha, dropout).train()
    fused = copy.deepcopy(plain)
    assert fused_lora(fused) == 14  # 7 linear layers x 2 decoder layers
    want, got = loss_and_grads(plain, ids()), loss_and_grads(fused, ids())
    assert_same(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad(), plain.disable_adapter():
        assert not torch.allclose(want[0], plain(input_ids=ids()).logits, atol=1e-3)  # the LoRA term is there


def test_fused_lora_on_a_4bit_base_gives_pefts_numbers(tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny().save_pretrained(tmp_path)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=nf4, dtype=torch.float32)
    plain = with_lora(base).train()
    fused = copy.deepcopy(plain)
    assert fused_lora(fused) == 14
    assert "bnb" in type(next(m for m in fused.modules() if "forward" in m.__dict__)).__module__
    assert_same(loss_and_grads(fused, ids()), loss_and_grads(plain, ids()), rtol=1e-5, atol=1e-6)


def test_fused_lora_in_bf16_is_no_further_from_fp32_than_peft():
    """Under CPU bf16 autocast peft rounds the LoRA term, its scaled copy and the sum; the fused forward
    rounds once."""
    ref = with_lora(tiny()).eval()
    plain, fused = copy.deepcopy(ref), copy.deepcopy(ref)
    fused_lora(fused)
    x = ids()
    with torch.no_grad():
        exact = ref(input_ids=x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            err_plain = (plain(input_ids=x).logits.float() - exact).abs().max()
            err_fused = (fused(input_ids=x).logits.float() - exact).abs().max()
    assert 0 < err_fused <= 1.25 * err_plain


def test_fused_lora_leaves_other_cases_to_peft():
    """Adapters disabled, merged, or two active at once: the fused forward hands the call to peft's."""
    plain = with_lora(tiny()).eval()
    plain.add_adapter("second", copy.deepcopy(plain.peft_config["default"]))
    fused = copy.deepcopy(plain)
    fused_lora(fused)
    x = ids()
    with torch.no_grad():
        with plain.disable_adapter(), fused.disable_adapter():
            assert torch.equal(fused(input_ids=x).logits, plain(input_ids=x).logits)
        for model in (plain, fused):
            model.base_model.set_adapter(["default", "second"])
        assert torch.equal(fused(input_ids=x).logits, plain(input_ids=x).logits)
        for model in (plain, fused):
            model.base_model.set_adapter("default")
            model.merge_adapter()
        assert torch.equal(fused(input_ids=x).logits, plain(input_ids=x).logits)


def saved_bytes(model, x, which) -> int:
    """Bytes of the distinct storages of the tensors `which` picks that a training forward keeps for backward."""
    seen = {}

    def pack(t):
        if which(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=x, labels=x).loss.backward()
    return sum(seen.values())


def fp32_saved_bytes(model, x) -> int:
    return saved_bytes(model, x, lambda t: t.dtype == torch.float32)


def as_built(model):
    """LoRA weights in fp32 over a half-precision base, as train.model.build leaves them."""
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def grad_error(run, ref) -> float:
    """The largest gradient difference from `ref`'s, relative to the tensor's largest, over its tensors."""
    return max(float((run[1][n] - g).abs().max() / g.abs().max()) for n, g in ref[1].items())


NORMS = {"llama": 2 * 2 + 1, "gemma3": 2 * 6 + 1}  # 2 layers of 2 norms (Gemma-3: 4, and q/k norms), final


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_closed_form_norms_give_autograds_loss_and_gradients(family):
    """fp32: the same forward bit for bit, and autograd's gradients to fp32 rounding. A wrong closed form
    (the mean term left out, Gemma's 1 + weight taken as weight) is off by far more than the tolerance."""
    plain = with_lora(tiny(family)).train()
    closed = copy.deepcopy(plain)
    assert closed_form_norms(closed) == NORMS[family]
    want, got = loss_and_grads(plain, ids()), loss_and_grads(closed, ids())
    assert torch.equal(got[0], want[0])
    assert_same(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_closed_form_norms_in_bf16_are_no_further_from_fp32_and_keep_no_fp32_copies(family):
    """bf16 base, CPU autocast: the same logits bit for bit, LoRA gradients no further from the fp32 model's
    than autograd's own, and under a third of the fp32 bytes kept for backward (the norms' fp32 copies gone:
    measured 3.4x fewer on Llama, 6.9x on Gemma-3 with its q/k norms)."""
    exact = with_lora(tiny(family)).train()
    plain = as_built(copy.deepcopy(exact).to(torch.bfloat16))
    closed = copy.deepcopy(plain)
    closed_form_norms(closed)
    x = ids()
    ref = loss_and_grads(exact, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = loss_and_grads(plain, x), loss_and_grads(closed, x)
        kept_plain, kept = fp32_saved_bytes(plain, x), fp32_saved_bytes(closed, x)
    assert torch.equal(got[0], want[0])
    assert 0 < grad_error(got, ref) <= 1.25 * grad_error(want, ref), (grad_error(got, ref), grad_error(want, ref))
    assert kept < kept_plain / 3, (kept, kept_plain)


def test_closed_form_norms_with_fp32_weights_over_an_fp16_model():
    """A T4's recipe (train.model.upcast_norms): an fp16 base whose norm weights are fp32, so Llama's norm
    returns fp32 (fp32 weight x fp16 xhat). The closed form is recognised on it and gives the same forward
    bit for bit, and gradients no further from the fp32 model's than autograd's."""
    from kaggle_kit.train.model import upcast_norms

    exact = with_lora(tiny()).train()
    plain = as_built(copy.deepcopy(exact).to(torch.float16))
    assert upcast_norms(plain) == NORMS["llama"]
    closed = copy.deepcopy(plain)
    assert closed_form_norms(closed) == NORMS["llama"]
    x = ids()
    ref = loss_and_grads(exact, x)
    with torch.autocast("cpu", dtype=torch.float16):
        want, got = loss_and_grads(plain, x), loss_and_grads(closed, x)
    assert torch.equal(got[0], want[0])
    assert 0 < grad_error(got, ref) <= 1.25 * grad_error(want, ref), (grad_error(got, ref), grad_error(want, ref))


def test_a_norm_of_another_form_keeps_its_own_forward():
    """An RMSNorm whose forward is neither Llama's nor Gemma's formula (here: a bias after the weight) is
    not given the closed form."""

    class BiasedRMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.eps = torch.nn.Parameter(torch.randn(8)), 1e-6

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) + 0.5

    model = torch.nn.Sequential(BiasedRMSNorm())
    assert closed_form_norms(model) == 0
    assert "forward" not in model[0].__dict__


def test_build_leaves_peft_and_the_norms_alone_with_fast_paths_off(tmp_path):
    from kaggle_kit.config import TrainConfig
    from kaggle_kit.hardware import detect
    from kaggle_kit.train import model as train_model

    def patched(fast: bool) -> int:
        cfg = TrainConfig("science_exam", "x.csv", quant="none", dtype="bfloat16", fast_paths=fast)
        model, _ = train_model.build(cfg, detect(cfg.dtype, "cpu"))
        return sum("forward" in m.__dict__ for m in model.modules())

    assert patched(False) == 0
    assert patched(True) == 30 * 7 + 30 * 2 + 1 + 30  # SmolLM2: 30 layers of 7 LoRA layers and 2 norms, final
    # norm, 30 MLPs
    # (the last layer's pruning patches only inside a label-position forward)


def test_all_linear_lora_leaves_a_multimodal_models_other_towers_alone(tmp_path):
    """Gemma 3 4B and up load as the vision-language class: 'all-linear' adapts every projection of its
    text layers and nothing in the SigLIP tower or the projector, which plain peft would adapt too."""
    from peft import LoraConfig, get_peft_model

    from kaggle_kit.config import TrainConfig
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_tokenizer
    from kaggle_kit.train.model import TOWERS, build, left_out

    from .. import tiny_models

    def adapted(model) -> set:
        return {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}

    folder = tiny_models.save("gemma3_vl", tmp_path)
    cfg = TrainConfig("science_exam", "x.csv", model=str(folder), quant="none", dtype="float32")
    ours = adapted(build(cfg, detect("float32", "cpu"))[0])
    plain = get_peft_model(
        tiny_models.build("gemma3_vl", load_tokenizer(folder)), LoraConfig(target_modules="all-linear")
    )
    towers = {n for n in adapted(plain) if any(t in n.split(".") for t in TOWERS)}
    assert towers and ours == adapted(plain) - towers
    assert len(ours) == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 text layers
    assert left_out(tiny()) is None  # a text model: nothing left out


def test_all_linear_lora_leaves_llama4s_router_alone_and_trains(tmp_path):
    """Llama 4's router is a linear layer whose forward returns (scores, logits): peft's LoRA layer on it
    failed on the tuple. 'all-linear' leaves it out and adapts the rest; a step's loss has gradients."""
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    from kaggle_kit.config import TrainConfig
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import demo_model_dir, load_tokenizer
    from kaggle_kit.train.model import build

    tok = load_tokenizer(demo_model_dir())
    size = dict(SIZE, vocab_size=len(tok), intermediate_size_mlp=128, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    config = Llama4TextConfig(**size, num_local_experts=4, num_experts_per_tok=1, pad_token_id=tok.pad_token_id)
    Llama4ForCausalLM(config).save_pretrained(tmp_path / "llama4")
    tok.save_pretrained(tmp_path / "llama4")
    cfg = TrainConfig("science_exam", "x.csv", model=str(tmp_path / "llama4"), quant="none", dtype="float32")
    model, _ = build(cfg, detect("float32", "cpu"))
    adapted = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert "router" not in adapted and {"q_proj", "o_proj", "down_proj"} <= adapted
    x = torch.randint(3, 96, (2, 12))
    model(input_ids=x, labels=x).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def right_padded():
    """Three right-padded rows of unequal length, one answer token each at its last position (loss:
    answer), plus a completion of three tokens in the second row."""
    torch.manual_seed(4)
    x = torch.randint(3, 96, (3, 14))
    mask = (torch.arange(14) < torch.tensor([[14], [9], [12]])).long()
    labels = torch.full_like(x, data.IGNORE)
    for row, end in enumerate((14, 9, 12)):
        labels[row, end - 1] = x[row, end - 1]
    labels[1, 3:6] = x[1, 3:6]
    return x, mask, labels


@contextmanager
def last_mlp_positions(model):
    """Within the block, the positions the last layer's MLP runs on, one entry a forward."""
    from kaggle_kit.infer.fast.last_position import last_layer

    seen = []
    hook = last_layer(model).mlp.down_proj.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    try:
        yield seen
    finally:
        hook.remove()


def label_loss_and_grads(model, pruned: bool):
    """The loop's label-position loss (chunked from hidden states) and the LoRA gradients, with the last
    layer pruned to the labelled positions or whole; also the positions its MLP ran on."""
    from kaggle_kit.train import fast

    (fast._ON_LABELS.add if pruned else fast._ON_LABELS.discard)(model)
    x, mask, labels = right_padded()
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    model.zero_grad(set_to_none=True)
    with last_mlp_positions(model) as seen:
        loss = data.chunked_token_loss(model, *data.labelled_hidden(model, model, x, mask, labels), n_items)
        loss.backward()
        plain, _ = data.label_logits(model, x, mask, labels)  # the full-logits path prunes alike
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (loss.item(), plain.detach(), grads), seen


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_last_layer_on_labelled_positions_gives_the_whole_layers_loss_and_gradients(family):
    """Gemma-3's layers here are sliding-window layers of 8 positions, so the rows (9-14 tokens) run past
    the window, as rows of more than 512 tokens run past Gemma-3-270M's."""
    model = with_lora(tiny(family))
    assert last_layer_on_labels(model)
    (loss, logits, grads), seen = label_loss_and_grads(model, pruned=True)
    (want_loss, want_logits, want_grads), whole = label_loss_and_grads(model, pruned=False)
    assert seen == [6, 6] and whole == [14, 14]  # positions 2, 3, 4, 7, 10, 12 (a label next) of 14
    assert loss == pytest.approx(want_loss, rel=1e-6)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == want_grads.keys()
    for name, g in want_grads.items():  # the last layer's LoRA B of q, o and the MLP included
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_the_last_layer_stays_whole_under_checkpointing_and_for_experts():
    """Checkpointed layers recompute in backward, outside the forward's block; a mixture of experts' router
    loss reads every position: neither prunes."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from kaggle_kit.train import fast

    model = with_lora(tiny())
    assert "the last layer whole" in fast_paths(model, layers_checkpointed=True)
    assert model not in fast._ON_LABELS
    torch.manual_seed(0)
    experts = MixtralForCausalLM(MixtralConfig(**SIZE, num_key_value_heads=2, num_local_experts=4))
    assert not last_layer_on_labels(with_lora(experts))


def test_a_forward_that_keeps_no_position_runs_the_last_layer_whole():
    """A micro-batch with no labelled position (keep is empty) must not hand the layer an empty input."""
    from kaggle_kit.infer.fast.last_position import positions_only

    model = with_lora(tiny())
    x = ids()
    with torch.no_grad(), last_mlp_positions(model) as seen:
        want = model(input_ids=x).logits
        with positions_only(model, torch.tensor([], dtype=torch.long)):
            got = model(input_ids=x).logits
    assert seen == [12, 12]
    torch.testing.assert_close(got, want)


def test_the_last_layer_stays_whole_while_lora_dropout_draws_masks():
    """Exact or off: in training, LoRA dropout in the last layer would draw masks for fewer positions than
    peft draws for the same seed, so the layer runs whole; in eval mode (no masks drawn) it is pruned."""
    model = with_lora(tiny(), dropout=0.2)
    assert last_layer_on_labels(model)
    x, mask, labels = right_padded()
    with torch.no_grad(), last_mlp_positions(model) as seen:
        for training in (True, False):
            model.train(training)
            data.labelled_hidden(model, model, x, mask, labels)
    assert seen == [14, 6]


def wide_saved_bytes(model, x, width: int) -> int:
    """Bytes of the distinct (.., width)-wide activations (not weights) a training forward keeps."""
    return saved_bytes(model, x, lambda t: t.dim() and t.shape[-1] == width and t.grad_fn is not None)


@pytest.mark.parametrize("family, dropout", [("llama", 0.0), ("gemma3", 0.0), ("llama", 0.2)])
def test_gated_mlps_give_the_mlps_loss_and_gradients_bit_for_bit(family, dropout):
    """fp32 with LoRA on every MLP projection (dropout drawn in the MLP's own order where it is on): the
    same logits and every gradient equal, with act(gate) no longer kept (one of the 4 intermediate-wide
    tensors an MLP keeps)."""
    plain = with_lora(tiny(family), dropout=dropout).train()
    recomputed = copy.deepcopy(plain)
    assert gated_mlps(recomputed) == SIZE["num_hidden_layers"]
    x = ids()
    want, got = loss_and_grads(plain, x), loss_and_grads(recomputed, x)
    assert_same(got, want, rtol=0, atol=0)  # bit for bit
    wide = SIZE["intermediate_size"]
    one_a_layer = SIZE["num_hidden_layers"] * x.numel() * wide * 4  # act(gate), fp32
    assert wide_saved_bytes(plain, x, wide) - wide_saved_bytes(recomputed, x, wide) == one_a_layer


def test_gated_mlps_under_bf16_autocast_with_every_fast_path_are_bit_for_bit():
    """The training recipe on a CPU: a bf16 base, fp32 LoRA weights, autocast, the fused LoRA and the
    closed-form norms on both sides: the MLP's recomputed activation changes no bit."""
    base = with_lora(tiny("gemma3")).train()
    fused_lora(base), closed_form_norms(base)
    plain = as_built(base.to(torch.bfloat16))
    recomputed = copy.deepcopy(plain)
    assert gated_mlps(recomputed) == SIZE["num_hidden_layers"]
    x = ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = loss_and_grads(plain, x), loss_and_grads(recomputed, x)
    assert_same(got, want, rtol=0, atol=0)  # bit for bit


def test_an_mlp_of_another_form_keeps_its_own_forward():
    """Phi-3's MLP (one fused gate_up_proj) is not patched; neither is a gated MLP whose forward computes
    another formula (here: the product scaled)."""
    phi3 = with_lora(tiny("phi3"))
    assert gated_mlps(phi3) == 0

    llama = with_lora(tiny("llama"))
    mlp = llama.get_base_model().model.layers[0].mlp
    mlp.forward = lambda x: type(mlp).forward(mlp, x) * 0.5  # the instance's own forward: left alone
    other = type("ScaledMLP", (type(mlp),), {"forward": lambda self, x: type(mlp).forward(self, x) * 0.5})
    llama.get_base_model().model.layers[1].mlp.__class__ = other
    assert gated_mlps(llama) == 0


def test_gated_mlps_under_gradient_checkpointing_are_bit_for_bit():
    """A T4's recipe checkpoints every layer (non-reentrant, train.model.build): the layer's forward runs
    again in backward, the recomputed activation inside it; the same loss and gradients bit for bit."""
    plain = tiny("llama")
    plain.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    plain.enable_input_require_grads()
    plain = with_lora(plain).train()
    recomputed = copy.deepcopy(plain)
    assert gated_mlps(recomputed) == SIZE["num_hidden_layers"]
    assert recomputed.get_base_model().model.gradient_checkpointing
    x = ids()
    want, got = loss_and_grads(plain, x), loss_and_grads(recomputed, x)
    assert_same(got, want, rtol=0, atol=0)  # bit for bit


def test_an_activation_autocast_would_upcast_runs_again_under_the_forwards_autocast():
    """GPT-2's tanh GELU written out (x ** 3: a pow, which CUDA's autocast runs in fp32; here a CPU autocast
    op list is not assumed, so the activation upcasts itself only under autocast): backward recomputes it
    under the forward's autocast state, though backward runs outside it, so its gradient is autograd's bit for
    bit."""
    import math

    class NewGELU(torch.nn.Module):
        def forward(self, x):
            if torch.is_autocast_enabled("cpu"):
                x = x.float()
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    model = with_lora(tiny("llama")).train()
    for layer in model.get_base_model().model.layers:
        layer.mlp.act_fn = NewGELU()
    plain = as_built(model.to(torch.bfloat16))
    recomputed = copy.deepcopy(plain)
    assert gated_mlps(recomputed) == SIZE["num_hidden_layers"]
    x = ids()

    def forward_in_autocast(model):  # backward outside it, as autograd's CUDA threads run it
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=x, labels=x)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, got = forward_in_autocast(plain), forward_in_autocast(recomputed)
    assert_same(got, want, rtol=0, atol=0)  # bit for bit


def unmasked_loss_and_grads(model, unmasked: bool):
    """The loop's label-position loss and LoRA gradients on right_padded() rows, the padding mask dropped
    (unmasked) or passed; also the attention masks the decoder got, one a forward."""
    from kaggle_kit.train import fast

    (fast._UNMASKED.add if unmasked else fast._UNMASKED.discard)(model)
    x, mask, labels = right_padded()
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    seen = []
    decoder = model.get_base_model().get_decoder()
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask")), with_kwargs=True)
    model.zero_grad(set_to_none=True)
    try:
        loss = data.chunked_token_loss(model, *data.labelled_hidden(model, model, x, mask, labels), n_items)
        loss.backward()
        logits, targets = data.label_logits(model, x, mask, labels)
    finally:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (loss.item(), logits[targets != data.IGNORE].detach(), grads), seen  # a padding position's differ


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_right_padded_rows_without_a_mask_give_the_masked_loss_and_gradients(family):
    """Gemma-3's sliding windows (8 positions here) are shorter than the rows (9-14 tokens), as Gemma-3-270M's
    512 are shorter than a long row: transformers still builds the window's mask, the padding's goes."""
    model = with_lora(tiny(family))
    assert unmasked_padding(model)
    (loss, logits, grads), seen = unmasked_loss_and_grads(model, unmasked=True)
    (want_loss, want_logits, want_grads), masks = unmasked_loss_and_grads(model, unmasked=False)
    assert seen == [None, None] and all(m is not None for m in masks)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == want_grads.keys() and grads
    for name, g in want_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_a_left_padded_batch_a_bidirectional_model_and_experts_keep_the_mask():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, MixtralConfig, MixtralForCausalLM

    from kaggle_kit.train.fast import padding_mask

    model = with_lora(tiny())
    assert unmasked_padding(model)
    _, mask, _ = right_padded()
    assert padding_mask(model, mask) is None
    left = mask.flip(1)
    assert padding_mask(model, left) is left
    gaps = mask.clone()
    gaps[0, 5] = 0  # a hole inside a row: not right padding
    assert padding_mask(model, gaps) is gaps
    assert padding_mask(with_lora(tiny()), mask) is mask  # not let: fast paths off
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(**SIZE, num_key_value_heads=2, head_dim=16, use_bidirectional_attention=True)
    assert not unmasked_padding(with_lora(Gemma3ForCausalLM(cfg)))
    experts = MixtralForCausalLM(MixtralConfig(**SIZE, num_key_value_heads=2, num_local_experts=4))
    assert not unmasked_padding(with_lora(experts))


def loop_and_peft(fast, plain):
    """((loss, LoRA gradients) of the training loop's loss (train/step.py `loss`) on `fast`, the same of
    the model's plain label logits on `plain`), on right_padded() rows."""
    from types import SimpleNamespace

    from kaggle_kit.train.step import loss as step_loss

    x, mask, labels = right_padded()
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    out = []
    for model in (fast, plain):
        model.zero_grad(set_to_none=True)
        if model is fast:
            loss = step_loss(model, model, SimpleNamespace(head=None), None, x, mask, labels, n_items)
        else:
            loss = data.token_loss(*data.label_logits(model, x, mask, labels), n_items)
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    return out


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_every_fast_path_on_qwen3_and_its_experts_gives_pefts_loss_and_gradients(family):
    """Qwen3's q/k norms take the closed form. On Qwen3-MoE, "all-linear" LoRA also adapts the router's and
    the experts' weights through peft's ParamWrapper, which is no linear layer: those keep peft's forward
    (the fused one took the router's (logits, weights, experts) tuple for a tensor and crashed), and the
    experts keep the padding mask and the whole last layer. The loop's loss against plain peft's."""
    plain = with_lora(tiny(family)).train()
    fast = copy.deepcopy(plain)
    report = fast_paths(fast, layers_checkpointed=False)
    if family == "qwen3":
        assert report.startswith("fast paths: 14 LoRA layers fused, 9 norms") and "no padding mask" in report
    else:  # 4 attention projections a layer; 3 norms a layer (with q/k) + the final
        assert report.startswith("fast paths: 8 LoRA layers fused, 9 norms") and "the padding mask" in report
        assert any("ParamWrapper" in type(m).__name__ for m in fast.modules())
    (loss, grads), (want_loss, want_grads) = loop_and_peft(fast, plain)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert grads.keys() == want_grads.keys() and len(grads) == 2 * 7 * 2  # A and B of 7 adapted weights a layer
    for name, g in want_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", ["gpt_oss", "gemma4", "qwen3_5", "deepseek_v3"])
def test_every_fast_path_on_the_newer_families_gives_pefts_loss_and_gradients(family):
    """The training loop's loss (train/step.py `loss`) with every fast path against plain peft's, on
    tests/tiny_models.py's gpt-oss (attention sinks, experts), Gemma 4 (KV-shared layers, per-layer
    embeddings), Qwen3.5 (linear-attention layers) and DeepSeek-V3 (latent attention, experts): the same loss
    and LoRA gradients in fp32."""
    from kaggle_kit.models import demo_model_dir, load_tokenizer

    from .. import tiny_models

    plain = with_lora(tiny_models.build(family, load_tokenizer(demo_model_dir()))).train()
    fast = copy.deepcopy(plain)
    fast_paths(fast, layers_checkpointed=False)
    (loss, grads), (want_loss, want_grads) = loop_and_peft(fast, plain)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert grads.keys() == want_grads.keys() and grads
    tol = 1e-3 if family == "gemma4" else 1e-4  # Gemma 4's init (0.2) is ill-conditioned: fp32 is 5e-4 from fp64
    for name, g in want_grads.items():  # within a tolerance of the tensor's largest gradient
        gap = float((grads[name] - g).abs().max() / g.abs().max())
        assert gap < tol, f"{name}: {gap:.2g}"
