"""Playbook techniques on the real SmolLM2: TTA views cancel position bias, shots and TTA through predict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import jobs
from kaggle_kit.competitions import get
from kaggle_kit.config import ValidateConfig
from kaggle_kit.errors import ConfigError
from kaggle_kit.infer import run_task
from kaggle_kit.infer.primitives import choice_task

from ..conftest import DATA, run_kit, write_subset


def _probs(model, tok, comp, df, tta):
    views = comp.views(df, tok, 512, tta) if tta > 1 else None
    task = choice_task(model, tok, comp.examples(df, tok, 512), list(comp.labels), max_length=512, views=views)
    out, _ = run_task(task, model, batch_tokens=4096, progress=False)
    return np.asarray(out)


def test_science_five_views_make_the_answer_independent_of_option_order(demo_model_fp32):
    model, tok = demo_model_fp32
    comp = get("science_exam")
    df = comp.read(DATA / "science_exam" / "train.csv", labelled=True).head(3)
    shifted = df.copy()
    for j, letter in enumerate("ABCDE"):
        shifted[letter] = df["ABCDE"[(j + 1) % 5]].to_numpy()  # letter j now shows option j+1
    back = [(j + 1) % 5 for j in range(5)]
    p, q = _probs(model, tok, comp, df, 5), _probs(model, tok, comp, shifted, 5)
    np.testing.assert_allclose(q, p[:, back], atol=2e-4)
    # without the views the model's letter preference shows: the same check fails by far more
    p1, q1 = _probs(model, tok, comp, df, 1), _probs(model, tok, comp, shifted, 1)
    assert np.abs(q1 - p1[:, back]).max() > 0.01


def test_lmsys_swap_view_makes_a_and_b_symmetric(demo_model_fp32):
    model, tok = demo_model_fp32
    comp = get("lmsys")
    df = comp.read(DATA / "lmsys" / "test.csv").head(3)
    swapped = df.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    p, q = _probs(model, tok, comp, df, 2), _probs(model, tok, comp, swapped, 2)
    np.testing.assert_allclose(q, p[:, [1, 0, 2]], atol=2e-4)
    p1, q1 = _probs(model, tok, comp, df, 1), _probs(model, tok, comp, swapped, 1)
    assert np.abs(q1 - p1[:, [1, 0, 2]]).max() > 0.01


def test_predict_with_shots_and_tta_writes_a_valid_submission(tmp_path):
    data = write_subset("science_exam", tmp_path, 4)
    out = tmp_path / "sub.csv"
    shots_file = DATA / "science_exam" / "train.csv"
    res = run_kit(
        "predict",
        "science_exam",
        "--data",
        data,
        "--out",
        out,
        "--tta",
        2,
        "--shots",
        2,
        "--shots-file",
        shots_file,
        "--no-progress",
        "--max-length",
        768,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert jobs.validate(ValidateConfig("science_exam", str(out), str(data))) == []
    assert pd.read_csv(out)["prediction"].str.split().map(len).eq(3).all()


def test_paired_training_rows_swap_the_label_with_the_view():
    from kaggle_kit.config import TrainConfig
    from kaggle_kit.models import demo_model_dir, load_tokenizer

    def train_pairs(comp, df, tok, cfg):
        return comp.train_pairs(df, tok, cfg.max_length, cfg.views)

    tok = load_tokenizer(demo_model_dir())
    lm = get("lmsys")
    df = lm.read(DATA / "lmsys" / "train.csv", labelled=True).head(6)
    cfg = TrainConfig("lmsys", str(DATA / "lmsys" / "train.csv"), views=2, max_length=512)
    prompts, comps, perms = train_pairs(lm, df, tok, cfg)
    n = len(df)
    assert len(prompts) == len(comps) == 2 * n
    assert comps[n:] == [{"A": "B", "B": "A", "C": "C"}[c] for c in comps[:n]]
    assert perms[:n] == [[0, 1, 2]] * n and perms[n:] == [[1, 0, 2]] * n
    # Science: in every view the label letter shows the right answer's text
    sci = get("science_exam")
    df = sci.read(DATA / "science_exam" / "train.csv", labelled=True).head(4)
    prompts, comps, _ = train_pairs(sci, df, tok, TrainConfig("science_exam", "x.csv", views=5))
    rows = df.to_dict("records") * 5
    for prompt, letter, row in zip(prompts, comps, rows):
        assert f"{letter}) {row[row['answer']]}" in prompt
    with pytest.raises(ConfigError, match="'views'"):
        train_pairs(get("prompt_recovery"), df, tok, TrainConfig("prompt_recovery", "x.csv", views=2))


def test_average_adapters_means_every_tensor_and_loads(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from kaggle_kit.models import average_adapters, demo_model_dir, load_model

    def adapter(name, seed, r=4):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(demo_model_dir())
        cfg = LoraConfig(r=r, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
        get_peft_model(base, cfg).save_pretrained(tmp_path / name)
        return tmp_path / name

    a, b = adapter("fold0", 0), adapter("fold1", 1)
    out = average_adapters([a, b], tmp_path / "avg")
    ta, tb, tm = (load_file(p / "adapter_model.safetensors") for p in (a, b, out))
    assert ta.keys() == tm.keys()
    for k in ta:
        torch.testing.assert_close(tm[k], (ta[k] + tb[k]) / 2)
    model, tok = load_model("demo", adapter=str(out))
    with torch.inference_mode():
        assert torch.isfinite(model(**tok("Hello", return_tensors="pt")).logits).all()
    with pytest.raises(ConfigError, match="differs .* in \\['r'\\]"):
        average_adapters([a, adapter("r8", 2, r=8)], tmp_path / "bad")
