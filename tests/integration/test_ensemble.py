"""Ensembles and the cascade on the real SmolLM2: members in their own processes, weights fitted on
labels, the least confident rows re-answered by a second model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import jobs
from kaggle_kit.competitions import get
from kaggle_kit.config import EnsembleConfig, PredictConfig
from kaggle_kit.infer import run_task
from kaggle_kit.infer.primitives import choice_task
from kaggle_kit.jobs.ensemble import combine, fit, fit_weights, least_confident, load_spec
from kaggle_kit.metrics import fit_temperature

from ..conftest import DATA, native_bf16

COLS = ["winner_model_a", "winner_model_b", "winner_tie"]


def test_fit_then_predict_equals_the_weighted_members(tmp_path, demo_model, monkeypatch):
    """Two real models of two families: SmolLM2 with the A/B swap view, and Gemma-3-270M. Predicting
    plays a T4 x2 (two GPUs counted): the members run side by side, each seeing its own device."""
    from kaggle_kit.models import load_model

    comp = get("lmsys")
    truth = tmp_path / "valid.csv"
    pd.read_csv(DATA / "lmsys" / "train.csv", dtype=str).head(3).to_csv(truth, index=False)
    spec_path = tmp_path / "ens.yaml"
    spec_path.write_text("members:\n  - {name: smollm, tta: 2}\n  - {name: gemma, model: 'demo:gemma3'}\n")
    fit(EnsembleConfig("lmsys", str(spec_path), str(truth), work=str(tmp_path / "w"), max_length=320))
    spec = load_spec(spec_path)
    assert not list(tmp_path.glob("w.*"))  # the members' temporary results are gone

    df = comp.read(truth, labelled=True)
    refs = []  # each member alone, in this process
    for (model, tok), tta in ((demo_model, 2), (load_model("demo:gemma3"), 1)):
        views = comp.views(df, tok, 320, 2) if tta == 2 else None
        task = choice_task(model, tok, comp.examples(df, tok, 320), list(comp.labels), max_length=320, views=views)
        refs.append(np.asarray(run_task(task, model, progress=False)[0]))
    y = comp.targets(df)
    np.testing.assert_allclose(spec.weight_vector(), fit_weights(y, refs), atol=1e-3)
    assert spec.temperature == pytest.approx(fit_temperature(y, combine(comp, refs, spec.weight_vector())), rel=1e-3)
    assert spec.fitted["log_loss_fitted"] <= spec.fitted["log_loss_equal_weights"] + 1e-6

    out = tmp_path / "sub.csv"
    monkeypatch.setattr("kaggle_kit.jobs.work._gpu_count", lambda: 2)
    res = jobs.predict(PredictConfig("lmsys", str(truth), out=str(out), max_length=320, ensemble=str(spec_path)))
    assert res.predicted == 3 and res.fallback == 0
    smollm, gemma = res.stats["members"]
    assert (smollm["name"], smollm["gpu"], gemma["name"], gemma["gpu"]) == ("smollm", "0", "gemma", "1")
    assert gemma["started"] < smollm["finished"] and smollm["started"] < gemma["finished"]  # side by side
    want = combine(comp, refs, spec.weight_vector(), spec.temperature)
    np.testing.assert_allclose(pd.read_csv(out)[COLS].to_numpy(), want, atol=1e-4)


def run_cascade(tmp_path, demo_model, second: dict):
    """The cascade of `second` (PredictConfig fields of the second model) over 6 Science Exam rows, and the
    second model alone on the rows it re-answered: (cascade's predictions, the second's alone on those rows,
    the first model's predictions, the chosen rows). The second runs alone on the chosen rows only, the
    batches the cascade runs (in bf16 a row's numbers depend on the padding its batch gets)."""
    comp = get("science_exam")
    df = comp.read(DATA / "science_exam" / "train.csv", labelled=True).head(6)
    data = tmp_path / "test.csv"
    df.drop(columns="answer").to_csv(data, index=False)
    model, tok = demo_model
    task = choice_task(model, tok, comp.examples(df, tok, 2048), list(comp.labels), max_length=2048)
    first, _ = run_task(task, model, batch_tokens=2048, progress=False)
    chosen = least_confident(first, 0.5)
    out, alone = tmp_path / "sub.csv", tmp_path / "second.csv"
    cascade = {f"cascade_{k}": v for k, v in second.items()}
    res = jobs.predict(PredictConfig("science_exam", str(data), out=str(out), cascade_fraction=0.5, **cascade))
    assert res.stats["cascade_rows"] == 3
    chosen_data = tmp_path / "chosen.csv"
    df.drop(columns="answer").iloc[chosen].to_csv(chosen_data, index=False)
    jobs.predict(PredictConfig("science_exam", str(chosen_data), out=str(alone), **second))
    got = pd.read_csv(out)["prediction"]
    return got, pd.read_csv(alone)["prediction"].to_numpy(), comp.to_submission(df, first)["prediction"], chosen


def test_cascade_re_answers_only_the_least_confident_rows(tmp_path, demo_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kaggle_kit.models import demo_model_dir

    torch.manual_seed(0)  # a second "model": the demo model with a random LoRA adapter
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(demo_model_dir()), lora).save_pretrained(tmp_path / "big")

    got, alone, firsts, chosen = run_cascade(tmp_path, demo_model, {"adapter": str(tmp_path / "big")})
    assert (got[chosen].to_numpy() == alone).all()
    rest = [i for i in range(6) if i not in chosen]
    assert (got[rest] == firsts[rest]).all()
    assert (alone != firsts[chosen].to_numpy()).any()  # the second model answers differently: the test can tell
    assert not list(tmp_path.glob("sub.csv.*"))  # checkpoints and the subset file cleaned up


def test_cascade_to_a_second_architecture_re_answers_only_its_rows(tmp_path, demo_model):
    """--cascade-model demo:gemma3: SmolLM2 answers every row, Gemma-3-270M (another architecture and
    tokenizer, in its own process) re-answers the least confident half; those rows are its answers alone."""
    got, alone, firsts, chosen = run_cascade(tmp_path, demo_model, {"model": "demo:gemma3"})
    assert (got[chosen].to_numpy() == alone).all()
    rest = [i for i in range(6) if i not in chosen]
    assert (got[rest] == firsts[rest]).all()


@native_bf16
def test_dtype_cascade_re_checks_the_least_confident_rows_in_float32(tmp_path):
    """--cascade-dtype float32 alone: the same model re-answers the least confident bf16 rows in fp32
    (what brings bf16 top-1 agreement with fp32 from ~95% to ~99.5%, bench/infer_bench.py)."""
    data = tmp_path / "test.csv"
    pd.read_csv(DATA / "lmsys" / "train.csv", dtype=str).head(4).to_csv(data, index=False)
    first, alone, out = tmp_path / "first.csv", tmp_path / "alone.csv", tmp_path / "sub.csv"
    jobs.predict(PredictConfig("lmsys", str(data), out=str(first), max_length=320, dtype="bfloat16"))
    firsts = pd.read_csv(first)[COLS].to_numpy()
    chosen = least_confident(firsts, 0.5)
    res = jobs.predict(
        PredictConfig(
            "lmsys",
            str(data),
            out=str(out),
            max_length=320,
            dtype="bfloat16",
            cascade_dtype="float32",
            cascade_fraction=0.5,
        )
    )
    assert res.stats["cascade_rows"] == 2 and res.fallback == 0
    chosen_data = tmp_path / "chosen.csv"
    pd.read_csv(data, dtype=str).iloc[chosen].to_csv(chosen_data, index=False)
    jobs.predict(PredictConfig("lmsys", str(chosen_data), out=str(alone), max_length=320, dtype="float32"))
    got, fp32 = pd.read_csv(out)[COLS].to_numpy(), pd.read_csv(alone)[COLS].to_numpy()
    np.testing.assert_allclose(got[chosen], fp32, atol=1e-6)
    rest = [i for i in range(4) if i not in chosen]
    np.testing.assert_array_equal(got[rest], firsts[rest])
    assert np.abs(fp32 - firsts[chosen]).max() > 1e-4  # bf16 and fp32 differ there: the test can tell
