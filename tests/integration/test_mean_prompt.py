"""The Prompt Recovery mean-prompt search with the real MiniLM embedder, and its use in predict."""

from __future__ import annotations

import pandas as pd
import pytest

from kaggle_kit import jobs
from kaggle_kit.competitions import get
from kaggle_kit.config import MeanPromptConfig, PredictConfig, ValidateConfig
from kaggle_kit.embed import load_embedder
from kaggle_kit.playbooks.mean_prompt import mean_scs, optimize, vocabulary

from ..conftest import DATA, write_subset

MEAN_PROMPT = get("prompt_recovery").mean_text


def _known_prompts() -> list[str]:
    return pd.read_csv(DATA / "prompt_recovery" / "train.csv")["rewrite_prompt"].tolist()


def test_search_only_climbs_and_beats_its_start():
    prompts = _known_prompts()
    embed = load_embedder("minilm")
    targets = embed(prompts)
    start = float(mean_scs([MEAN_PROMPT], targets, embed)[0])
    res = optimize(prompts, embed, vocab=vocabulary(prompts, 12), max_words=20, restarts=1, start=MEAN_PROMPT)
    scores = [s for _, s in res.history]
    assert scores == sorted(scores) and res.score >= start
    assert res.score > start + 0.01  # the hand-written mean prompt is not a local optimum for these prompts
    assert float(mean_scs([res.text], targets, embed)[0]) == pytest.approx(res.score, abs=1e-5)


def test_cli_job_writes_the_text_and_predict_uses_it(tmp_path):
    res = jobs.mean_prompt(
        MeanPromptConfig(
            str(DATA / "prompt_recovery" / "train.csv"),
            max_words=4,
            restarts=1,
            vocab_size=20,
            out=str(tmp_path / "mean.txt"),
        )
    )
    text = (tmp_path / "mean.txt").read_text().strip()
    assert text == res.text and text
    data = write_subset("prompt_recovery", tmp_path, 2)
    out = tmp_path / "sub.csv"
    jobs.predict(
        PredictConfig(
            "prompt_recovery",
            str(data),
            out=str(out),
            max_new_tokens=4,
            progress=False,
            max_length=384,
            mean_prompt=str(tmp_path / "mean.txt"),
            append_mean_prompt=True,
        )
    )
    assert jobs.validate(ValidateConfig("prompt_recovery", str(out), str(data))) == []
    assert all(p.endswith(" " + text) or p == text for p in pd.read_csv(out)["rewrite_prompt"])


def test_scs_truncation_and_special_tokens_are_explicit_options():
    """The scorer cuts at max_tokens and, as Kaggle's did, reads a special token's spelling as text."""
    import numpy as np

    from kaggle_kit.embed import scorer

    head = "Rewrite this text as a pirate would tell it. " * 12  # > 128 word pieces
    longer = head + "Then add a poem about the sea and a recipe for bread. " * 8
    cut, full = scorer("minilm", max_tokens=128), scorer("minilm", max_tokens=512)
    np.testing.assert_allclose(cut([head])[0], cut([longer])[0], atol=1e-6)  # past the cut: not read
    assert np.abs(full([head])[0] - full([longer])[0]).max() > 1e-3
    # MiniLM's special token is [SEP]; read as text it is the characters '[', 'sep', ']'
    as_text, parsed = scorer("minilm"), scorer("minilm", special_tokens_as_text=False)
    np.testing.assert_allclose(as_text(["make it [SEP] formal"]), as_text(["make it [ SEP ] formal"]), atol=1e-6)
    assert np.abs(parsed(["make it [SEP] formal"]) - parsed(["make it [ SEP ] formal"])).max() > 1e-3
