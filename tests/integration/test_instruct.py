"""The NTU ADL homework's perplexity evaluation and synthetic Prompt Recovery data, with the real SmolLM2."""

from __future__ import annotations

import json

import pytest

from kaggle_kit.competitions import get
from kaggle_kit.config import PerplexityConfig, SynthConfig
from kaggle_kit.playbooks.instruct import evaluate
from kaggle_kit.playbooks.synth import synthesize

from ..conftest import DATA


def test_perplexity_zero_shot_matches_the_training_metric_and_shots_change_it(tmp_path, demo_model):
    from kaggle_kit.infer import perplexity
    from kaggle_kit.metrics import perplexity as ppl_metric
    from kaggle_kit.train.data import alpaca_pairs, read_alpaca

    records = read_alpaca(DATA / "alpaca" / "public_test.json")[:4]
    data = tmp_path / "test.json"
    data.write_text(json.dumps(records, ensure_ascii=False))
    train = read_alpaca(DATA / "alpaca" / "train.json")
    for r in train:  # the category the NTU ADL homework balanced: which way the translation goes
        r["direction"] = "to_modern" if ("現代" in r["instruction"] or "白話" in r["instruction"]) else "to_classical"
    shots_file = tmp_path / "train.json"
    shots_file.write_text(json.dumps(train, ensure_ascii=False))

    zero = evaluate(PerplexityConfig(str(data), max_length=256, progress=False))
    model, tok = demo_model  # the training loop's seed-003 metric on the same records
    nlls, _ = perplexity(model, tok, *alpaca_pairs(records, tok), max_length=256, progress=False)
    assert zero.perplexity == pytest.approx(ppl_metric(nlls), rel=1e-4)
    assert zero.scored == 4 and zero.perplexity > 1.0

    few = evaluate(
        PerplexityConfig(str(data), shots=2, shots_file=str(shots_file), shots_category="direction", progress=False)
    )
    assert few.shots == 2 and few.scored == 4 and abs(few.perplexity - zero.perplexity) > 1e-3


def test_synthetic_rewrites_have_the_train_format(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Rewrite this as a short poem.\nRewrite this in a formal tone.\nMake it a pirate's tale.\n")
    out = tmp_path / "syn.csv"
    cfg = SynthConfig(
        str(DATA / "prompt_recovery" / "train.csv"), str(prompts), str(out), rows=2, per_text=2, max_new_tokens=12
    )
    res = synthesize(cfg)
    assert res.requested == 4 and res.rows + res.dropped == 4 and res.rows >= 3
    df = get("prompt_recovery").read(out, labelled=True)  # the competition's own train reader accepts it
    assert set(df["rewrite_prompt"]) <= set(prompts.read_text().splitlines())
    assert df.groupby("original_text")["rewrite_prompt"].nunique().eq(2).all() or res.dropped
    assert not (tmp_path / "syn.csv.ckpt.jsonl").exists()
