"""Playbook pieces without a model: temperature fitting, option-permutation and A/B-swap views, shots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kaggle_kit.competitions import get
from kaggle_kit.config import CalibrateConfig, PredictConfig
from kaggle_kit.errors import ConfigError, InputError
from kaggle_kit.jobs import check_tta
from kaggle_kit.metrics import fit_temperature, log_loss
from kaggle_kit.playbooks.calibration import calibrate, temperature

from ..conftest import DATA

LETTERS = ("A", "B", "C", "D", "E")


def pick_shots(train, k, exclude=(), seed=0):
    return get("science_exam").shots(train, k, exclude=exclude, seed=seed)


class Tok:
    """Stand-in tokenizer: render() falls back to the plain format without a chat template."""

    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return text.split()

    def decode(self, ids):
        return " ".join(ids)


def test_fit_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(6000, 3))
    p_true = np.exp(z / 2.0) / np.exp(z / 2.0).sum(1, keepdims=True)  # the truth is twice as soft
    y = np.array([rng.choice(3, p=p) for p in p_true])
    overconfident = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(2.0, rel=0.1)
    z_t = np.log(overconfident) / t
    fixed = np.exp(z_t) / np.exp(z_t).sum(1, keepdims=True)
    assert log_loss(y, fixed) < log_loss(y, overconfident) - 0.05


def test_science_views_are_the_cyclic_shifts():
    df = pd.read_csv(DATA / "science_exam" / "test.csv", dtype=str, keep_default_na=False).head(3)
    comp = get("science_exam")
    views = comp.views(df, Tok(), 2048, 5)
    assert [perm for _, perm in views] == [[[(j + k) % 5 for j in range(5)]] * 3 for k in range(1, 5)]
    for prompts, perms in views:
        for prompt, row, perm in zip(prompts, df.to_dict("records"), perms):
            for j, letter in enumerate(LETTERS):
                assert f"{letter}) {row[LETTERS[perm[j]]]}\n" in prompt + "\n"


def test_lmsys_view_swaps_the_responses():
    df = get("lmsys").read(DATA / "lmsys" / "test.csv").head(2)
    ((prompts, perm),) = get("lmsys").views(df, Tok(), 2048, 2)
    assert perm == [1, 0, 2]
    a, b = df["response_a"].iloc[0][-1], df["response_b"].iloc[0][-1]
    assert prompts[0].index(b[:40]) < prompts[0].index(a[:40])  # model B's answer now sits in slot A


def test_tta_limits_name_the_field():
    with pytest.raises(ConfigError, match="'tta'.*at most 2"):
        check_tta(get("lmsys"), 3)
    with pytest.raises(ConfigError, match="'tta'.*at most 1"):
        check_tta(get("prompt_recovery"), 2)
    with pytest.raises(ConfigError, match="shots_file"):
        PredictConfig("science_exam", "x.csv", shots=5)


def test_shots_are_balanced_over_letters_and_never_the_test_rows():
    train = get("science_exam").read(DATA / "science_exam" / "train.csv", labelled=True)
    block = pick_shots(train, 5, exclude=train["id"].head(10).tolist())
    answers = [line.split(": ")[1] for line in block.splitlines() if line.startswith("Answer: ")]
    assert sorted(answers) == list(LETTERS)
    for q in train["prompt"].head(10):
        assert f"Question: {q}\n" not in block
    assert pick_shots(train, 5, exclude=train["id"].tolist()) == ""  # nothing left to pick
    # braces in the data are text, not format fields
    odd = train.head(5).assign(prompt="What is {x} in f(x)={y}?")
    prompts = get("science_exam").examples(train.head(1), Tok(), 2048, pick_shots(odd, 1))
    assert "What is {x} in f(x)={y}?" in prompts[0]


def test_calibrate_saves_with_the_adapter_and_predict_uses_it(tmp_path):
    truth = get("lmsys").read(DATA / "lmsys" / "train.csv", labelled=True)
    y = truth[["winner_model_a", "winner_model_b", "winner_tie"]].astype(int).to_numpy().argmax(1)
    sharp = np.full((len(y), 3), 0.02)
    sharp[np.arange(len(y)), (y + (np.arange(len(y)) % 2)) % 3] = 0.96  # half right, very confident
    sub = pd.DataFrame(sharp, columns=["winner_model_a", "winner_model_b", "winner_tie"])
    sub.insert(0, "id", truth["id"].tolist())
    sub.to_csv(tmp_path / "valid_sub.csv", index=False)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    res = calibrate(
        CalibrateConfig(
            "lmsys", str(tmp_path / "valid_sub.csv"), str(DATA / "lmsys" / "train.csv"), adapter=str(adapter)
        )
    )
    assert res["temperature"] > 1.5 and res["log_loss_after"] < res["log_loss_before"]
    saved = json.loads((adapter / "calibration.json").read_text())
    assert saved["temperature"] == pytest.approx(res["temperature"])
    cfg = PredictConfig("lmsys", "x.csv", adapter=str(adapter))
    assert temperature(cfg) == pytest.approx(res["temperature"])
    assert temperature(PredictConfig("lmsys", "x.csv", adapter=str(adapter), temperature=1.03)) == 1.03
    with pytest.raises(InputError, match="not an adapter folder"):
        calibrate(
            CalibrateConfig(
                "lmsys", str(tmp_path / "valid_sub.csv"), str(DATA / "lmsys" / "train.csv"), adapter=str(tmp_path)
            )
        )


def test_mean_prompt_replaces_the_fallback_and_is_appended():
    comp = get("prompt_recovery")
    sub = pd.DataFrame({"id": ["0", "1"], "rewrite_prompt": ["Make it a poem", comp.mean_text]})
    assert comp.with_mean_text(sub, "rewrite text tone")["rewrite_prompt"].tolist() == [
        "Make it a poem",
        "rewrite text tone",
    ]
    assert comp.with_mean_text(sub, "rewrite text tone", append=True)["rewrite_prompt"].tolist() == [
        "Make it a poem rewrite text tone",
        "rewrite text tone",
    ]
    with pytest.raises(ConfigError, match="append_mean_prompt"):
        PredictConfig("prompt_recovery", "x.csv", append_mean_prompt=True)
