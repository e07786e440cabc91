"""Training's loss from hidden states in chunks (train/data.py) on families whose logits are not the output
layer's plain product: Gemma 2's final soft cap is applied as the model applies it; a model with another
transform (Cohere's logit scale) is detected and keeps the full-logits path. Same loss and gradients as
the model's own `labels=` loss, fp32."""

from __future__ import annotations

import pytest
import torch

from kaggle_kit.train import data


def tiny(family: str):
    from transformers import CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    size = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    size.update(num_key_value_heads=2, head_dim=8)
    if family == "gemma2":
        cfg = Gemma2Config(**size, final_logit_softcapping=1.5, attn_logit_softcapping=None, sliding_window=16)
        return Gemma2ForCausalLM(cfg).eval()
    return CohereForCausalLM(CohereConfig(**size, logit_scale=0.25)).eval()


def batch():
    """Two right-padded rows with completions of unequal length at unequal positions."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 0, 0, 0]])
    mask = (torch.arange(8) < torch.tensor([[8], [5]])).long()
    labels = torch.full_like(ids, data.IGNORE)
    labels[0, 4:8], labels[1, 2:5] = ids[0, 4:8], ids[1, 2:5]
    return ids, mask, labels


@pytest.mark.parametrize("family, exact", [("gemma2", True), ("cohere", False)])
def test_chunked_loss_equals_the_models_own(family, exact, monkeypatch):
    model = tiny(family)
    monkeypatch.setattr(data, "LOGIT_CHUNK", 2 * 96)  # two positions a chunk
    ids, mask, labels = batch()
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    assert data.head_is_exact(model, ids) is exact
    model.zero_grad()
    own = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    own.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    if exact:
        loss = data.chunked_token_loss(model, *data.labelled_hidden(model, model, ids, mask, labels), n_items)
    else:
        loss = data.token_loss(*data.label_logits(model, ids, mask, labels), n_items)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(own.detach()), rel=1e-6)
    for n, g in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-7)


def test_chunks_are_as_equal_as_they_go():
    """No remainder chunk of a row or two (their products round ~10x more in fp32 over a large vocabulary)."""
    assert [data.chunk_rows(n, 64) for n in (1, 4, 64, 65, 128, 129, 200)] == [1, 4, 64, 33, 64, 43, 50]
    assert data.chunk_rows(0, 64) == 1


@pytest.mark.parametrize("lead", [1, 2])
def test_each_epoch_starts_with_its_largest_batches(lead):
    """The `lead` largest padded batches (rows x longest row) come first in every epoch, so a batch that
    does not fit fails at step 1; every row is still in exactly one batch, and the rest keep the seed's
    shuffled order."""
    lengths = [30, 7, 90, 12, 55, 8, 91, 40, 33, 5, 60, 61, 2]  # 13 rows in batches of 3: the last is [91]

    def size(b):
        return len(b) * max(lengths[i] for i in b)

    for epoch in range(4):
        batches = data.epoch_batches(lengths, 3, seed=1, epoch=epoch, lead=lead)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert sorted(map(size, batches[:lead])) == sorted(map(size, batches))[-lead:]
        plain = data.epoch_batches(lengths, 3, seed=1, epoch=epoch, lead=0)  # the seed's order alone
        assert batches[lead:] == [b for b in plain if b not in batches[:lead]]
    # padded size, not the longest row, leads: 60, 61 and 90 (270 tokens padded) before 91 alone
    assert [lengths[i] for i in data.epoch_batches(lengths, 3, seed=1, epoch=0)[0]] == [60, 61, 90]
    assert len({str(data.epoch_batches(lengths, 3, seed=s, epoch=0)[1:]) for s in range(4)}) > 1


def test_pieces_keep_order_and_stay_within_the_padded_tokens():
    """An out-of-memory step's micro-batch is cut into consecutive pieces of at most `cap` padded tokens
    (rows x longest row); a row longer than `cap` goes alone; None keeps the micro-batch whole."""
    rows = [data.Example(list(range(n)), list(range(n))) for n in (3, 4, 4, 9, 10)]
    assert data.pieces(rows, None) == [rows]
    cut = data.pieces(rows, 8)
    assert [[len(e.input_ids) for e in p] for p in cut] == [[3, 4], [4], [9], [10]]
    assert [e for p in cut for e in p] == rows
    assert all(len(p) == 1 or len(p) * max(len(e.input_ids) for e in p) <= 8 for p in cut)
    assert [len(p) for p in data.pieces(rows, 30)] == [3, 2]  # 3 x 4 <= 30, 4 x 9 > 30, then 2 x 10
