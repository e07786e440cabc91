"""`make demo`'s job on every shipped competition with labelled rows in data/: every one runs end to end
(regressions: Eedi's catalogue not beside the rows, alpaca's JSON rows written as CSV, perplexity has no
submission to score), the table's counts are rows, not model items, and each recipe is fitted on rows
that are never scored."""

from __future__ import annotations

import shutil

import pandas as pd

from kaggle_kit.jobs import demo
from kaggle_kit.jobs.demo import labelled_competitions, print_demo, run_demo

from ..conftest import DATA, ROOT, shortest_lmsys_rows


def test_demo_runs_every_labelled_competition(tmp_path, capsys):
    names = labelled_competitions(DATA)
    assert {"science_exam", "lmsys", "prompt_recovery", "eedi", "llm_detect", "aimo", "alpaca"} <= set(names)
    table = run_demo(str(DATA), str(tmp_path), rows=4, progress=False, recipes=False, max_new_tokens=24)
    assert [row["competition"] for row in table] == names
    for row in table:
        # two scored file rows each; Eedi's prepare turns a question into one row per wrong answer (3)
        assert row["rows"] == (6 if row["competition"] == "eedi" else 2), row
        assert row["fallback"] == 0 and isinstance(row["zero-shot"], float), row
    by_name = {row["competition"]: row for row in table}
    assert by_name["alpaca"]["constant"] == "-" and by_name["alpaca"]["zero-shot"] > 1.0  # a perplexity
    print_demo(table)
    assert "eedi" in capsys.readouterr().out


def test_each_recipe_fits_on_rows_it_never_scores(tmp_path, monkeypatch):
    # the LMSYS recipe's QLoRA cut to one step of plain LoRA (NF4 on a CPU is slow; test_train.py runs it)
    config = tmp_path / "lmsys_tiny.yaml"
    text = (ROOT / "configs" / "lmsys_demo.yaml").read_text()
    text = text.replace("max_steps: 8", "max_steps: 1").replace("eval_every: 4", "eval_every: 1")
    config.write_text(text.replace("quant: nf4", "quant: none"))
    monkeypatch.setitem(demo.RECIPES, "lmsys", demo.Recipe("tiny", tta=2, train=str(config), calibrate=True))
    names = ["science_exam", "lmsys", "prompt_recovery"]
    data = tmp_path / "data"  # data/ with LMSYS's 8 shortest rows first (a sixth of the first 8's tokens)
    for name in names:
        shutil.copytree(DATA / name, data / name)
    lmsys = pd.read_csv(DATA / "lmsys" / "train.csv", dtype=str, keep_default_na=False)
    shortest_lmsys_rows(lmsys).to_csv(data / "lmsys" / "train.csv", index=False)
    table = run_demo(str(data), str(tmp_path / "out"), names=names, rows=8, progress=False, max_new_tokens=24)
    for row in table:
        assert isinstance(row["recipe"], float) and row["rows"] == 4, row
        out = tmp_path / "out" / row["competition"]
        scored = pd.read_csv(out / "train.csv", dtype=str)
        fitted = pd.read_csv(out / "fit" / "train.csv", dtype=str)
        assert len(fitted) == 4 and not set(scored.iloc[:, 0]) & set(fitted.iloc[:, 0])
    lmsys = tmp_path / "out" / "lmsys"
    assert (lmsys / "train").is_dir() and list(lmsys.glob("train/*/calibration.json"))
    assert (tmp_path / "out" / "prompt_recovery" / "mean_prompt.txt").is_file()
