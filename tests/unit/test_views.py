"""Shared-prefix TTA (infer/fast/views.py): each row's head runs once and its views continue from it; the
numbers are those of every view run whole, one row at a time, in fp32, on either side of a sliding window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaggle_kit.infer.fast.views import MIN_SAVED, ViewPrefix

from .. import conftest

WINDOW = 64


def tiny_mistral():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, attn_implementation="eager",
    )  # fmt: skip
    return MistralForCausalLM(config).eval()


def views_of(rows: int, head: int, seed: int = 0, question=(16, 31)) -> list[list[list[int]]]:
    """Three views of `rows` rows: a shared head of `head` tokens, a row's own question of 16-30 tokens
    (or `question`'s range), then an option block of 7-13 tokens that each view shows in another order."""
    rng = np.random.default_rng(seed)
    start = rng.integers(3, 120, head).tolist()
    out = [[], [], []]
    for _ in range(rows):
        asked = rng.integers(3, 120, int(rng.integers(*question))).tolist()
        options = [rng.integers(3, 120, int(rng.integers(1, 4))).tolist() for _ in range(3)]
        for v in range(3):
            block = [t for k in range(3) for t in [1] + options[(k + v) % 3]]
            out[v].append(start + asked + block + [2])
    return out


def last_probs(model, rows, inputs):
    with torch.inference_mode():
        logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1].float()
    return torch.softmax(logits, -1).numpy()


def one_by_one(model, row):
    with torch.inference_mode():
        return torch.softmax(model(input_ids=torch.tensor([row])).logits[0, -1].float(), -1).numpy()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_views_continue_from_their_rows_heads_exactly(family):
    model = conftest.tiny_llama(attn_implementation="eager") if family == "llama" else tiny_mistral()
    views = views_of(6, head=18)
    heads = ViewPrefix(model, views, window=WINDOW if family == "mistral" else None)
    assert heads.active and heads.shared.length == 18 and 0 < heads.saved() < 1
    batch = list(range(6))
    got = heads.scores(batch, batch, 0, lambda rows, inputs: last_probs(model, rows, inputs), lambda: _null())
    for v, view in enumerate(views):
        for i in batch:
            np.testing.assert_allclose(got[v][i], one_by_one(model, view[i]), atol=1e-6)
    assert heads.batches == 1


def test_a_batch_past_the_window_runs_its_views_whole():
    """Under a sliding window padding counts as slots; a batch that would exceed it is not run in two
    stages (applies is False, counted), and one that fits is."""
    views = views_of(6, head=18, question=(20, 50))
    heads = ViewPrefix(tiny_mistral(), views, window=WINDOW)
    fits = [i for i in range(6) if heads._slots([i]) <= WINDOW]
    too_long = [i for i in range(6) if heads._slots([i]) > WINDOW]
    assert fits and too_long  # the rows fall on both sides of the window
    assert heads.applies(fits[:1]) and not heads.applies(too_long[:1])
    assert heads.whole_batches == 1


def test_a_split_batch_pads_each_view_as_the_whole_batch_did():
    """Regression guard for out-of-memory splits: the halves of a batch are padded as the batch was, so
    their numbers are the whole batch's, not merely close. On one thread: with two, torch's CPU matmul
    splits 3 rows and 6 rows between the threads differently, and the last bits move (1e-9)."""
    import torch

    model = conftest.tiny_llama(attn_implementation="eager")
    views = views_of(6, head=18, seed=1)
    heads = ViewPrefix(model, views)
    score = lambda rows, inputs: last_probs(model, rows, inputs)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = heads.scores(list(range(6)), list(range(6)), 0, score, _null)
        parts = {tuple(h): heads.scores(h, list(range(6)), 0, score, _null) for h in ([0, 1, 2], [3, 4, 5])}
    finally:
        torch.set_num_threads(threads)
    for half, part in parts.items():
        for v in range(3):
            np.testing.assert_array_equal(part[v], whole[v][list(half)])


def test_a_batch_whose_heads_save_little_runs_its_views_whole():
    """Two stages cost a second forward and a copy of each head's cache per view: a batch whose heads save
    less than MIN_SAVED of its padded tokens runs whole views (counted in unsaved_batches), as LMSYS's A/B
    swap does; one that saves more runs in two stages."""
    model = conftest.tiny_llama(attn_implementation="eager")
    views = views_of(4, head=18)
    tails = [[3 + (7 * v + k) % 110 for k in range(300)] for v in range(3)]  # 300 tokens each view has alone
    long = [[row + tails[v] for row in view] for v, view in enumerate(views)]
    rows = list(range(4))
    short, longer = ViewPrefix(model, views), ViewPrefix(model, long)
    assert short.heads == longer.heads and longer.active  # the same heads, shared by 3 views
    two, whole = longer.padded(rows)
    assert two > (1 - MIN_SAVED) * whole  # 300 more tokens a view dilute what the heads save
    two, whole = short.padded(rows)
    assert two <= (1 - MIN_SAVED) * whole
    assert short.applies(rows) and not longer.applies(rows)
    assert (short.unsaved_batches, longer.unsaved_batches) == (0, 1)


def test_rows_that_share_little_with_their_views_do_not_take_the_two_stages():
    views = views_of(4, head=18)
    moved = [views[0], [r[::-1] for r in views[1]], views[2]]  # a view that differs from its first token
    assert not ViewPrefix(None, moved).active
    assert not ViewPrefix(None, views, enabled=False).active
    assert not ViewPrefix(None, views[:1]).active  # no TTA: one view


def _null():
    import contextlib

    return contextlib.nullcontext()
