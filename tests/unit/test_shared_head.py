"""Training's shared head (kaggle_kit/train/shared_head.py): a batch packed around the tokens its rows
start with against the same rows unshared, on tiny randomly initialised models of each family
(tests/tiny_models.py): the same loss and LoRA gradients in fp32 where it runs, the rows where it must not
(and the self-check that keeps them when a packed forward differs)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from kaggle_kit.train import data, shared_head
from kaggle_kit.train.fast import fast_paths

from .. import tiny_models

HEAD = 20  # tokens the rows share: above shared_head.MIN_HEAD


def rows(lengths=(40, 31, 36), head: int = HEAD):
    """Right-padded rows that start with the same `head` tokens, one answer token each at its end and a
    three-token completion in the second row."""
    torch.manual_seed(4)
    width = max(lengths)
    x = torch.randint(3, 96, (len(lengths), width))
    x[:, :head] = x[0, :head]
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    labels = torch.full_like(x, data.IGNORE)
    for row, end in enumerate(lengths):
        labels[row, end - 1] = x[row, end - 1]
    labels[1, 25:28] = x[1, 25:28]
    return x, mask, labels


def model(family: str, dropout: float = 0.0, checkpointed: bool = False):
    """(fast, plain): the tiny `family` with LoRA (B drawn at random) and every fast path, and a copy without."""
    from peft import LoraConfig, get_peft_model

    from kaggle_kit.models import demo_model_dir, load_tokenizer

    base = tiny_models.build(family, load_tokenizer(demo_model_dir()))
    for p in base.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    plain = get_peft_model(base, lora).train()
    torch.manual_seed(1)
    for name, p in plain.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    fast = copy.deepcopy(plain)
    fast_paths(fast, layers_checkpointed=checkpointed)
    if not checkpointed:  # as train.model.build enables it
        shared_head.enable(fast)
    return fast, plain


def label_position_loss(m, x, mask, labels, n_items):
    """The loop's label-position loss (train/step.py `loss`: the labelled positions' hidden states through the
    output layer, its forward keeping recipes for backward, train/recompute.py)."""
    from types import SimpleNamespace

    from kaggle_kit.train.step import loss

    return loss(m, m, SimpleNamespace(head=None), None, x, mask, labels, n_items)


def plain_loss(m, x, mask, labels, n_items):
    """Plain peft's label logits (a model that never shares: not enabled)."""
    return data.token_loss(*data.label_logits(m, x, mask, labels), n_items)


def loss_and_grads(fast, plain, batch, fast_loss=label_position_loss, plain_loss=plain_loss):
    """((loss, LoRA gradients, the decoder's input shapes) of `fast_loss` on `fast`, the same of `plain_loss`
    on `plain`)."""
    x, mask, labels = batch
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    out = []
    for m, loss_of in ((fast, fast_loss), (plain, plain_loss)):
        shapes = []
        decoder = m.get_base_model().get_decoder()
        hook = decoder.register_forward_pre_hook(
            lambda mod, a, kw, seen=shapes: seen.append(_rows(kw)), with_kwargs=True
        )
        m.zero_grad(set_to_none=True)
        try:
            loss = loss_of(m, x, mask, labels, n_items)
            loss.backward()
        finally:
            hook.remove()
        out.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, shapes))
    return out


def _rows(kw: dict) -> tuple:
    """(rows, tokens) a decoder forward got (token ids, or embeddings from a vision-language wrapper)."""
    x = kw.get("input_ids")
    return tuple((x if x is not None else kw["inputs_embeds"]).shape[:2])


def assert_same(got, want):
    (loss, grads, _), (want_loss, want_grads, _) = got, want
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert grads.keys() == want_grads.keys() and grads
    for name, g in want_grads.items():  # within a tolerance of the tensor's largest gradient
        gap = float((grads[name] - g).abs().max() / g.abs().max())
        assert gap < 1e-4, f"{name}: {gap:.2g}"  # measured up to 3.4e-5 (Gemma 4), 1.2e-5 elsewhere


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "phi3", "gemma3", "qwen3", "gemma4"])
def test_a_shared_head_runs_once_with_the_rows_loss_and_gradients(family):
    """The head's 20 tokens run once: one packed row of 20 + 20 + 11 + 16 tokens instead of 3 x 40 (after
    the once-per-model check of the first two rows, packed and as rows). Mistral's and Gemma 3's windows
    (64) are wider than the batch; Gemma 4's last layers read earlier layers' keys and values; Phi-3's
    projections are fused."""
    fast, plain = model(family)
    got, want = loss_and_grads(fast, plain, rows())
    assert got[2] == [(1, 32), (1, 51), (2, 40), (1, 67)] and want[2] == [(3, 40)]
    assert_same(got, want)
    got, _ = loss_and_grads(fast, plain, rows())
    assert got[2] == [(1, 67)]  # checked once


@pytest.mark.parametrize(
    "family, why",
    [
        ("gemma2", "soft-capped attention runs eager"),
        ("qwen3_5", "linear-attention layers"),
        ("gemma3_vl", "the padding mask is kept"),
        ("qwen3_moe", "mixtures of experts keep the mask"),
        ("gemma3", "a window narrower than the batch"),
        ("llama", "LoRA dropout draws masks"),
        ("llama", "layers checkpointed"),
        ("llama", "a head shorter than MIN_HEAD"),
        ("llama", "one row"),
    ],
)
def test_the_rows_run_as_rows_where_a_shared_head_would_not_be_exact(family, why):
    fast, plain = model(family, dropout=0.1 if "dropout" in why else 0.0, checkpointed="checkpointed" in why)
    batch = rows()
    if "narrower" in why:
        batch = rows((70, 66, 68))  # the tiny Gemma 3's window is 64
    elif "shorter" in why:
        batch = rows(head=shared_head.MIN_HEAD - 1)
    elif "one row" in why:
        batch = tuple(t[:1] for t in batch)
    assert shared_head.packed(fast, *batch) is None
    torch.manual_seed(3)  # the same dropout masks in both runs
    got = loss_and_grads(fast, plain, batch)[0]
    torch.manual_seed(3)
    want = loss_and_grads(fast, plain, batch)[1]
    # the step ran as rows, and no forward was a packed row (longer than the batch's rows)
    assert got[2][-1] == tuple(batch[0].shape) and all(n <= batch[0].shape[1] for _, n in got[2])
    if "dropout" not in why:
        assert_same(got, want)


def test_a_packed_forward_that_differs_keeps_the_rows(caplog):
    """The once-per-model check: an attention that lets every packed token see all before it (the rows
    leaking into each other, as a model whose attention ignored the rows would) fails it, the batch runs
    as rows with the rows' loss, and the log says why."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    fast, plain = model("llama")

    def leaky(module, query, key, value, attention_mask, dropout=0.0, scaling=None, kit_rows=None, **kw):
        return sdpa_attention_forward(module, query, key, value, None, dropout, scaling, **kw)

    AttentionInterface.register(shared_head.NAME, leaky)
    try:
        with caplog.at_level(logging.INFO, logger="kaggle_kit"):
            got, want = loss_and_grads(fast, plain, rows())
    finally:
        AttentionInterface.register(shared_head.NAME, shared_head.rows_sdpa)
    assert got[2] == [(1, 32), (1, 51), (2, 40), (3, 40)]  # the head checked, the pack checked, rows
    assert "packed forward differs" in caplog.text
    assert_same(got, want)


def test_head_length_stops_before_the_first_labelled_prediction():
    x, mask, labels = rows()
    assert shared_head.head_length(x, mask, labels) == HEAD
    labels[2, 15] = x[2, 15]  # a label inside the common tokens: the head ends before position 14 predicts it
    assert shared_head.head_length(x, mask, labels) == 14
    same = x.clone()
    same[1] = same[0]  # rows that differ only in length: each keeps one token of its own
    short = (torch.arange(40) < torch.tensor([[40], [40], [12]])).long()
    assert shared_head.head_length(same[:2], short[:2], torch.full_like(same[:2], data.IGNORE)) == 39
    assert shared_head.head_length(x, short, torch.full_like(x, data.IGNORE)) == 11


def test_the_packed_batch_is_the_rows_tokens_positions_and_targets():
    x, mask, labels = rows()
    batch = shared_head.pack(x, mask, labels, HEAD)
    n = HEAD + sum(int(k) - HEAD for k in mask.sum(dim=1))
    assert batch.ids.shape == batch.positions.shape == batch.targets.shape == (1, n) == (1, 67)
    real = mask.bool()
    # each row's tokens and positions, gathered back from the packed ones
    assert torch.equal(batch.ids[0][batch.gather][real], x[real])
    assert torch.equal(batch.positions[0][batch.gather][real], torch.arange(x.shape[1]).expand_as(x)[real])
    # each packed token's output is taken from a row position holding that token
    assert torch.equal(x.flatten()[batch.source], batch.ids[0])
    # the targets, in the order the rows' labelled positions come (row by row, left to right)
    want = labels[:, 1:][labels[:, 1:] != data.IGNORE]
    assert torch.equal(batch.targets[0][batch.targets[0] != data.IGNORE], want)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_label_logits_of_a_shared_head_give_the_rows_distillation_loss_and_gradients(family):
    """data.label_logits (distillation's path, and a model whose output layer alone is not its logits) packs
    its batches too: the logits at each labelled position are the rows', zeros at the positions a row has no
    label at (which no loss reads), so a teacher's KL and the hard NLL, and their gradients, are the rows'."""
    fast, plain = model(family)
    soft = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])

    def distilled(m, x, mask, labels, n_items):
        return data.distill_loss(*data.label_logits(m, x, mask, labels), soft, [5, 6, 7], 0.5, n_items)

    got, want = loss_and_grads(fast, plain, rows(), distilled, distilled)
    assert got[2] == [(1, 51), (2, 40), (1, 67)] and want[2] == [(3, 40)]
    assert_same(got, want)
