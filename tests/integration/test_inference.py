"""Inference primitives on the real SmolLM2: batching and padding do not change the answers."""

import numpy as np
import pytest
import torch

from kaggle_kit.infer import generate, label_token_ids, perplexity, score_choices
from kaggle_kit.templates import render

from ..conftest import native_bf16

QUESTIONS = [
    "Which planet is known as the Red Planet? A) Venus B) Mars C) Jupiter D) Saturn E) Mercury",
    "What is 2 + 2? A) 3 B) 5 C) 4 D) 22 E) 0",
    "Water boils at what temperature at sea level, in Celsius? A) 50 B) 90 C) 100 D) 120 E) 0. "
    "Answer with the letter only, please, and think about standard atmospheric pressure first.",
]


@pytest.mark.parametrize(
    "name,chat_format",
    [("demo", "auto"), ("demo", "plain"), ("demo", "alpaca"), ("demo:gemma3", "auto"), ("demo:gemma3", "alpaca")],
)
def test_each_format_ends_where_a_label_is_the_tokenizers_own_next_token(name, chat_format):
    """A label scored after the prompt is the token the tokenizer makes of prompt + label: Gemma-3 (no chat
    template: 'auto' is plain) put 0.0000 of its mass on the letters after a prompt ending 'Answer: '."""
    from kaggle_kit.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(name))
    labels = ["A", "B", "C", "D", "E"]
    ids = label_token_ids(tok, labels)
    prompt = render(tok, QUESTIONS[0], "Answer with one letter.", chat_format)
    head = tok.encode(prompt, add_special_tokens=False)
    for label, i in zip(labels, ids):
        assert tok.encode(prompt + label, add_special_tokens=False) == [*head, i], (label, prompt[-20:])
    assert label_token_ids(tok, labels, [prompt]) == ids  # and the kit's own check agrees


@pytest.mark.parametrize("name", ["demo", "demo:gemma3"])
def test_a_prompt_ending_in_a_space_is_refused_naming_its_end(name):
    """The bug d9709e3 fixed in the kit's plain format, for any prompt: after 'Answer: ' both real
    tokenizers write ' A' as one token, so the letter's own token after the lone space is no text's split
    (Gemma-3 put 0.0000 of its mass on the letters there)."""
    from kaggle_kit.errors import ConfigError
    from kaggle_kit.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(name))
    with pytest.raises(ConfigError) as err:
        label_token_ids(tok, ["A", "B", "C"], [QUESTIONS[1] + "\nAnswer:\n", QUESTIONS[0] + "\nAnswer: "])
    assert err.value.field == "template" and "Mercury\\nAnswer: '" in str(err.value)


def test_score_choices_refuses_a_prompt_ending_in_a_space(demo_model):
    from kaggle_kit.errors import ConfigError

    model, tok = demo_model
    with pytest.raises(ConfigError, match="trailing whitespace"):
        score_choices(model, tok, [QUESTIONS[0] + "\nAnswer: "], ["A", "B", "C"], progress=False)


def test_score_choices_matches_unbatched_full_softmax(demo_model_fp32):
    model, tok = demo_model_fp32
    prompts = [render(tok, q) for q in QUESTIONS]
    labels = ["A", "B", "C", "D", "E"]
    probs, stats = score_choices(model, tok, prompts, labels, batch_tokens=4096, progress=False)
    assert stats.rows_done == 3 and stats.batches == 1  # one left-padded batch
    ids = label_token_ids(tok, labels)
    for i, p in enumerate(prompts):
        x = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            logits = model(**x).logits[0, -1].float()
        expected = torch.softmax(logits[ids], -1).numpy()
        np.testing.assert_allclose(probs[i], expected, atol=2e-3)
    assert np.allclose(probs.sum(axis=1), 1)


def test_temperature_flattens(demo_model):
    model, tok = demo_model
    prompts = [render(tok, QUESTIONS[0])]
    p1, _ = score_choices(model, tok, prompts, ["A", "B", "C"], progress=False)
    p5, _ = score_choices(model, tok, prompts, ["A", "B", "C"], temperature=5.0, progress=False)
    assert p5.max() < p1.max()


def test_generate_batched_equals_one_by_one(demo_model_fp32):
    model, tok = demo_model_fp32
    prompts = [render(tok, q) for q in ("Name a color.", "Say hello in French.", "What is 3 times 3?")]
    batched, _ = generate(model, tok, prompts, max_new_tokens=10, batch_tokens=4096, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=10, progress=False)[0][0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)


def test_perplexity_matches_manual_nll(demo_model_fp32):
    model, tok = demo_model_fp32
    prompts = [render(tok, "Translate to French: cat"), render(tok, "Say something.")]
    outputs = ["chat", "Hello there, how are you today?"]
    nlls, _ = perplexity(model, tok, prompts, outputs, progress=False)
    for p, o, got in zip(prompts, outputs, nlls):
        pi = tok(p, add_special_tokens=False)["input_ids"]
        oi = tok(o, add_special_tokens=False)["input_ids"]
        x = torch.tensor([pi + oi])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
        manual = [-logp[len(pi) - 1 + k, t].item() for k, t in enumerate(oi)]
        np.testing.assert_allclose(got, manual, atol=2e-3)


def test_prefix_cache_gives_the_numbers_of_whole_rows(demo_model_fp32):
    """The shared prefix (chat template + instructions) runs once; scores and texts are unchanged."""
    from kaggle_kit.infer import generation_task, run_task
    from kaggle_kit.infer.primitives import choice_task

    model, tok = demo_model_fp32
    prompts = [render(tok, "Answer with one letter. " * 4 + q) for q in QUESTIONS]
    labels = ["A", "B", "C", "D", "E"]
    with_prefix = choice_task(model, tok, prompts, labels)
    without = choice_task(model, tok, prompts, labels, prefix_cache=False)
    assert with_prefix.shared >= 16 and without.shared == 0
    assert with_prefix.lengths == [n - with_prefix.shared for n in without.lengths]  # planned on own tokens
    # small batches: rows of different lengths pad between the prefix and their own tokens
    p, _ = run_task(with_prefix, model, batch_tokens=128, progress=False)
    q, _ = run_task(without, model, batch_tokens=4096, progress=False)
    np.testing.assert_allclose(p, q, atol=1e-4)
    assert with_prefix.settings["prefix"] == with_prefix.shared  # part of the checkpoint fingerprint

    texts = {}
    for cached in (True, False):
        task = generation_task(model, tok, prompts, max_new_tokens=12, prefix_cache=cached)
        texts[cached], _ = run_task(task, model, batch_tokens=4096, progress=False)
    assert texts[True] == texts[False] and all(texts[True])


def test_stop_strings_end_generation_early_with_the_same_text(demo_model_fp32):
    model, tok = demo_model_fp32
    prompts = [render(tok, "List three fruits, one per line.")]
    full, _ = generate(model, tok, prompts, max_new_tokens=24, progress=False)
    cut, _ = generate(model, tok, prompts, max_new_tokens=24, stop=["\n"], progress=False)
    raw, _ = generate(model, tok, prompts, max_new_tokens=24, stop=["\x00never"], progress=False)
    assert "\n" in raw[0].strip()  # the model does write a newline, so the stop string matters
    assert cut[0] == raw[0].split("\n")[0].strip() and cut[0]
    assert full == raw


@native_bf16
def test_bf16_label_probabilities_come_closer_to_fp32_with_the_fp32_label_head(demo_model_fp32):
    """A bf16 model rounds its logits to steps of 1/16 near 16: each letter's probability moved by ~0.01
    and near-tied answers flipped (85% top-1 agreement with fp32 on 200 Science Exam rows). The label
    logits are now taken in fp32 from the hidden state the output layer reads (95%)."""
    from kaggle_kit import competitions
    from kaggle_kit.hardware import detect
    from kaggle_kit.infer.primitives import choice_task, run_task
    from kaggle_kit.models import load_model

    comp = competitions.get("science_exam")
    model32, tok = demo_model_fp32
    df = comp.read("data/science_exam/train.csv", labelled=True).head(12)
    prompts, labels = comp.examples(df, tok, 2048), list(comp.labels)
    p32, _ = score_choices(model32, tok, prompts, labels, progress=False)
    bf16, _ = load_model("demo", detect("bfloat16"))
    head, _ = score_choices(bf16, tok, prompts, labels, progress=False)
    own, _ = run_task(choice_task(bf16, tok, prompts, labels, fp32_head=False), bf16, progress=False)
    err_head, err_own = np.abs(head - p32).mean(), np.abs(own - p32).mean()
    assert err_head < 0.7 * err_own, (err_head, err_own)


def test_cpu_attention_and_last_layer_pruning_give_sdpas_numbers(demo_model_fp32):
    """The CPU model loads with the blocked attention (infer/fast/attention.py) and choice scoring prunes the
    last layer (infer/fast/last_position.py); with SDPA and no pruning the real model scores the same."""
    from kaggle_kit.infer import run_task
    from kaggle_kit.infer.fast import attention
    from kaggle_kit.infer.primitives import choice_task

    model, tok = demo_model_fp32
    assert model.config._attn_implementation == attention.NAME
    prompts = [render(tok, q) for q in QUESTIONS * 2]
    labels = ["A", "B", "C", "D", "E"]
    ours, _ = run_task(choice_task(model, tok, prompts, labels), model, batch_tokens=256, progress=False)
    try:
        model.set_attn_implementation("sdpa")
        plain = choice_task(model, tok, prompts, labels, prune_last_layer=False)
        theirs, _ = run_task(plain, model, batch_tokens=256, progress=False)
    finally:
        model.set_attn_implementation(attention.NAME)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
