"""predict end to end on the real SmolLM2: valid submissions, and every id under a tiny budget."""

import pandas as pd
import pytest

from kaggle_kit import competitions
from kaggle_kit.config import PredictConfig, ScoreConfig, ValidateConfig
from kaggle_kit.jobs import predict, score, validate

from ..conftest import DATA, write_subset


@pytest.mark.parametrize(
    "name,n,batch_tokens", [("science_exam", 12, 400), ("lmsys", 6, None), ("prompt_recovery", 6, None)]
)
def test_predict_writes_valid_scored_submission(name, n, batch_tokens, tmp_path):
    """Under a budget the rows fit: the planner times three batches of a run of more than six (Science Exam,
    one row a batch), and leaves a run of a few batches unplanned, not timed for half its length."""
    data = write_subset(name, tmp_path, n, labelled=True)
    out = tmp_path / "submission.csv"
    res = predict(
        PredictConfig(
            name, str(data), out=str(out), max_length=768, budget="1h", batch_tokens=batch_tokens, progress=False
        )
    )
    assert (res.rows, res.predicted, res.fallback) == (n, n, 0)
    assert (res.planned_seconds is not None) == (batch_tokens is not None)
    assert validate(ValidateConfig(name, str(out), str(data))) == []
    value = score(ScoreConfig(name, str(out), str(data)))
    assert -1.0 <= value <= 1.0 if name != "lmsys" else 0 < value < 10
    comp = competitions.get(name)
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert tuple(sub.columns) == comp.submission_columns
    assert sub["id"].tolist() == pd.read_csv(data, dtype=str)["id"].tolist()


def test_lmsys_real_test_file(tmp_path, monkeypatch):
    """And the tokenizer is read once: the label check's read serves the model's load (Gemma's 262k
    vocabulary took 3 s a read)."""
    from kaggle_kit import models

    reads, read = [], models.load_tokenizer
    monkeypatch.setattr(models, "load_tokenizer", lambda path: reads.append(path) or read(path))
    out = tmp_path / "submission.csv"
    res = predict(
        PredictConfig("lmsys", str(DATA / "lmsys" / "test.csv"), out=str(out), max_length=512, progress=False)
    )
    assert res.predicted == 3 and len(reads) == 1
    sub = pd.read_csv(out)
    assert sub["id"].tolist() == [136060, 211333, 1233961]
    assert (sub[["winner_model_a", "winner_model_b", "winner_tie"]].sum(axis=1) - 1).abs().max() < 1e-9


def test_tiny_budget_on_200_rows_keeps_every_id(tmp_path):
    """A budget that runs out mid-run: every id is still written, and the fallback count is reported."""
    data = write_subset("science_exam", tmp_path, 200)
    out = tmp_path / "submission.csv"
    # the model load (~1 s from the cache) and the first batches fit; 200 rows (~25 s) do not
    res = predict(PredictConfig("science_exam", str(data), out=str(out), budget="6s", progress=False))
    assert res.rows == 200 and res.predicted + res.fallback == 200
    assert res.fallback > 0
    assert validate(ValidateConfig("science_exam", str(out), str(data))) == []
    sub = pd.read_csv(out, dtype=str)
    assert (sub["prediction"] == "A B C").sum() >= res.fallback


def test_cli_predict_reports_fallback_count(tmp_path):
    import subprocess
    import sys

    data = write_subset("prompt_recovery", tmp_path, 200)
    out = tmp_path / "submission.csv"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaggle_kit",
            "predict",
            "prompt_recovery",
            "--data",
            str(data),
            "--out",
            str(out),
            "--budget",
            "5s",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert "200 rows" in line and "fallback" in line
    n_fallback = int(line.split(" resumed), ")[1].split(" fallback")[0])
    assert n_fallback > 0
    assert validate(ValidateConfig("prompt_recovery", str(out), str(data))) == []


def test_a_chat_template_ending_in_a_space_stops_the_run_before_the_model_loads(tmp_path):
    """A model whose own chat template ends 'Answer: ' would have every letter scored after a lone space
    token (infer/labels.py): predict names the template before it loads the model (the folder here has
    no weights, so loading them would fail otherwise), and the fallback submission keeps every id."""
    import shutil

    from kaggle_kit.errors import ConfigError
    from kaggle_kit.models import load_tokenizer, resolve_model

    src = resolve_model("demo")
    tok = load_tokenizer(src)
    tok.chat_template = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}Answer: "
    folder = tmp_path / "spaced"
    tok.save_pretrained(folder)
    shutil.copy(src / "config.json", folder / "config.json")
    data, out = write_subset("science_exam", tmp_path, 4), tmp_path / "submission.csv"
    with pytest.raises(ConfigError, match="Answer: ") as err:
        predict(PredictConfig("science_exam", str(data), model=str(folder), out=str(out), progress=False))
    assert err.value.field == "template"
    assert len(pd.read_csv(out)) == 4
