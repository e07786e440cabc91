"""Every task type from a spec, on real sample rows and the real SmolLM2: predict, validate, score, and a
training step; and a competition defined only by a spec file outside the package, end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import PredictConfig, predict
from kaggle_kit.competitions import get
from kaggle_kit.config import ScoreConfig, TrainConfig, ValidateConfig
from kaggle_kit.jobs import score, train, validate

from ..conftest import DATA, run_kit

QUICK = dict(progress=False, max_length=512)


def train_steps(tmp_path, spec, train_file, **kw):
    """Two optimizer steps of LoRA (no quantisation: the CPU's 4-bit path is slow) and an evaluation."""
    cfg = dict(
        competition=str(spec), train=str(train_file), out=str(tmp_path / "run"), quant="none", lora_r=4,
        lora_alpha=8, max_length=384, batch_size=2, grad_accum=1, max_steps=2, eval_every=2, log_every=1,
        progress=False, valid_fraction=0.3,
    )  # fmt: skip
    res = train(TrainConfig(**{**cfg, **kw}))
    assert res.steps == 2 and res.best is not None and (res.best / "adapter_config.json").is_file()
    return res


def test_multiple_choice_with_three_four_and_five_options_never_predicts_an_empty_one(tmp_path):
    """Regression: with column E empty the kit put E into the top three for 67 of 300 questions."""
    df = pd.read_csv(DATA / "science_exam" / "train.csv", dtype=str, keep_default_na=False).head(6)
    df.loc[0:1, ["D", "E"]] = ""  # rows of 3 options
    df.loc[2:3, "E"] = ""  # rows of 4, then 2 of 5
    df.loc[0:1, "answer"] = df.loc[0:1, "answer"].replace({"D": "A", "E": "B"})
    df.loc[2:3, "answer"] = df.loc[2:3, "answer"].replace({"E": "C"})
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "sub.csv"
    res = predict(PredictConfig("science_exam", str(path), out=str(out), tta=5, **QUICK))
    assert res.predicted == 6
    sub = pd.read_csv(out, dtype=str).set_index("id")
    for _, row in df.iterrows():
        have = {x for x in "ABCDE" if row[x].strip()}
        letters = sub.loc[row["id"], "prediction"].split()
        assert set(letters) <= have and len(letters) == min(3, len(have))
    assert validate(ValidateConfig("science_exam", str(out), str(path))) == []
    assert 0 <= score(ScoreConfig("science_exam", str(out), str(path))) <= 1
    train_steps(tmp_path, "science_exam", path, eval_metric=True, views=5)


def test_label_probabilities_binary_by_yes_no_tokens_with_roc_auc(tmp_path):
    """LLM-Detect: one probability column, ROC AUC over human and generated essays."""
    comp = get("llm_detect")
    rows = pd.read_csv(DATA / "llm_detect" / "train_essays.csv", dtype=str, keep_default_na=False)
    path = tmp_path / "essays.csv"
    pd.concat([rows.head(5), rows.tail(3)]).to_csv(path, index=False)
    out = tmp_path / "sub.csv"
    predict(PredictConfig("llm_detect", str(path), out=str(out), **QUICK))
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["id", "generated"] and sub["generated"].between(0, 1).all()
    assert validate(ValidateConfig("llm_detect", str(out), str(path))) == []
    assert 0 <= score(ScoreConfig("llm_detect", str(out), str(path))) <= 1
    assert comp.labels == ("No", "Yes")
    train_steps(tmp_path, "llm_detect", path, eval_metric=True, valid_fraction=0.5)


def test_label_probabilities_from_parquet_with_a_label_column_and_a_swap_view(tmp_path):
    """WSDM: a parquet test file, the winner's name per row, the A/B swap as a second view."""
    out = tmp_path / "sub.csv"
    predict(PredictConfig("wsdm", str(DATA / "wsdm" / "test.parquet"), out=str(out), tta=2, **QUICK))
    assert set(pd.read_csv(out)["winner"]) <= {"model_a", "model_b"}
    assert validate(ValidateConfig("wsdm", str(out), str(DATA / "wsdm" / "test.parquet"))) == []


def test_label_probabilities_ranked_labels_for_map(tmp_path):
    out = tmp_path / "sub.csv"
    predict(PredictConfig("map", str(DATA / "map" / "test.csv"), out=str(out), **QUICK))
    sub = pd.read_csv(out, dtype=str)
    assert all(len(v.split()) == 3 for v in sub["Category:Misconception"])
    assert validate(ValidateConfig("map", str(out), str(DATA / "map" / "test.csv"))) == []


def test_rank_candidates_retrieves_reranks_and_trains(tmp_path):
    """Eedi: a prediction row per wrong answer, 25 catalogue ids each, the LLM reranking the first few."""
    folder = tmp_path / "eedi"
    folder.mkdir()
    shutil.copy(DATA / "eedi" / "test.csv", folder)
    train_rows = pd.read_csv(DATA / "eedi" / "train.csv", dtype=str, keep_default_na=False).head(8)
    train_rows.to_csv(folder / "train.csv", index=False)
    # the misconceptions the rows name and 400 others (the embedding of all 2,587 adds time, not coverage)
    catalogue = pd.read_csv(DATA / "eedi" / "misconception_mapping.csv", dtype=str, keep_default_na=False)
    tagged = {str(int(float(v))) for c in "ABCD" for v in train_rows[f"Misconception{c}Id"] if v.strip()}
    keep = catalogue["MisconceptionId"].isin(tagged) | (catalogue.index < 400)
    catalogue[keep].to_csv(folder / "misconception_mapping.csv", index=False)
    out = tmp_path / "sub.csv"
    res = predict(PredictConfig("eedi", str(folder / "test.csv"), out=str(out), **QUICK))
    sub = pd.read_csv(out, dtype=str)
    assert res.rows == len(sub) == 9 and list(sub.columns) == ["QuestionId_Answer", "MisconceptionId"]
    known = set(pd.read_csv(folder / "misconception_mapping.csv", dtype=str)["MisconceptionId"])
    assert all(len(set(v.split())) == 25 and set(v.split()) <= known for v in sub["MisconceptionId"])
    assert validate(ValidateConfig("eedi", str(out), str(folder / "test.csv"))) == []
    labelled = folder / "labelled.csv"  # 2 questions (6 rows, 48 reranked pairs) to score against
    train_rows.head(2).to_csv(labelled, index=False)
    out2 = tmp_path / "train_sub.csv"
    predict(PredictConfig("eedi", str(labelled), out=str(out2), **QUICK))
    assert 0 <= score(ScoreConfig("eedi", str(out2), str(labelled))) <= 1
    train_steps(tmp_path, "eedi", folder / "train.csv", eval_metric=False)


def test_generate_answer_samples_votes_and_scores(tmp_path):
    """AIMO: sampled solutions per problem, the boxed integers voted on; a resumed run samples the same."""
    comp = get("aimo")
    assert comp.vote(["so \\boxed{12}", "\\boxed{7}", "it is \\boxed{12.0}", None]) == "12"
    assert comp.vote(["no answer here"]) is None and comp.extract("\\boxed{\\frac{1}{2}}") is None
    assert comp.extract("\\boxed{1234}") == "234"  # modulo 1000
    out = tmp_path / "sub.csv"
    cfg = PredictConfig("aimo", str(DATA / "aimo" / "test.csv"), out=str(out), max_new_tokens=24, **QUICK)
    predict(cfg)
    again = tmp_path / "again.csv"
    predict(PredictConfig("aimo", cfg.data, out=str(again), max_new_tokens=24, **QUICK))
    assert out.read_bytes() == again.read_bytes()  # seeded per batch: the same samples
    assert list(pd.read_csv(out).columns) == ["row_id", "id", "answer"]
    assert validate(ValidateConfig("aimo", str(out), str(DATA / "aimo" / "test.csv"))) == []
    ref = tmp_path / "ref.csv"
    predict(PredictConfig("aimo", str(DATA / "aimo" / "reference.csv"), out=str(ref), max_new_tokens=24, **QUICK))
    assert 0 <= score(ScoreConfig("aimo", str(ref), str(DATA / "aimo" / "reference.csv"))) <= 1
    train_steps(tmp_path, "aimo", DATA / "aimo" / "train.csv", eval_metric=False, max_length=256)


def test_generate_text_trains_from_its_spec(tmp_path):
    path = tmp_path / "train.csv"
    pd.read_csv(DATA / "prompt_recovery" / "train.csv", dtype=str).head(8).to_csv(path, index=False)
    train_steps(tmp_path, "prompt_recovery", path, eval_metric=False)


SPEC = """
name: toy_detector
slug: toy-detector
task: label_probabilities
files: {test: rows.csv, train: labelled.csv, sample_submission: null}
id: essay_id
columns: {essay: text}
labelled_columns: {label: text}
label_probabilities:
  classes: [{label: "No", name: human}, {label: "Yes", name: machine}]
  target: label
  output: probability
  column: score
  positive: machine
prepare: prepare.py:tidy
prompt:
  template: |-
    {{ essay_short }}

    Written by a language model? Reply Yes or No.
submission: [essay_id, score]
metric: roc_auc
"""
PREPARE = """
def tidy(df, labelled):
    df = df.copy()
    df["essay_short"] = [t[:500] for t in df["essay"]]
    return df
"""


def test_a_spec_outside_the_package_runs_end_to_end(tmp_path):
    """A competition the package has never seen: predict, validate, score, train and a kernel build,
    through the CLI and the API, from a spec file and the prepare function beside it."""
    folder = tmp_path / "my_comp"
    folder.mkdir()
    (folder / "competition.yaml").write_text(SPEC)
    (folder / "prepare.py").write_text(PREPARE)
    essays = pd.read_csv(DATA / "llm_detect" / "train_essays.csv", dtype=str, keep_default_na=False)
    essays = pd.concat([essays.head(6), essays.tail(3)]).reset_index(drop=True)
    labelled = pd.DataFrame(
        {"essay_id": [f"e{i}" for i in range(len(essays))], "essay": essays["text"],
         "label": np.where(essays["generated"] == "1", "machine", "human")}
    )  # fmt: skip
    labelled.to_csv(folder / "labelled.csv", index=False)
    labelled.drop(columns="label").to_csv(folder / "rows.csv", index=False)
    spec = folder / "competition.yaml"
    r = run_kit("check-spec", spec)
    assert r.returncode == 0 and "valid: toy_detector" in r.stdout
    out = tmp_path / "sub.csv"
    r = run_kit("predict", spec, "--data", folder / "rows.csv", "--out", out, "--no-progress", "--max-length", 512)
    assert r.returncode == 0, r.stderr
    assert list(pd.read_csv(out).columns) == ["essay_id", "score"]
    assert run_kit("validate", spec, out, "--test", folder / "rows.csv").returncode == 0
    sub = tmp_path / "labelled_sub.csv"
    predict(PredictConfig(str(spec), str(folder / "labelled.csv"), out=str(sub), **QUICK))
    r = run_kit("score", spec, "--submission", sub, "--truth", folder / "labelled.csv")
    assert r.returncode == 0 and "ROC AUC:" in r.stdout, r.stderr
    train_steps(tmp_path, spec, folder / "labelled.csv", eval_metric=True, valid_fraction=0.4)
    kernel = tmp_path / "kernel"
    build = ["kernel", "build", "--spec", spec, "--out", kernel, "--model-dir", "/kaggle/input/my-model"]
    r = run_kit(*build)  # the notebook reads /kaggle/input/my-model and no source mounts it
    assert r.returncode == 2 and "/kaggle/input/my-model" in r.stderr and not kernel.exists(), r.stderr
    r = run_kit(*build, "--dataset", "kit-tester/kaggle-kit-wheels", "--dataset", "kit-tester/my-model")
    assert r.returncode == 0, r.stderr
    notebook = (kernel / "toy_detector.ipynb").read_text()
    assert "def tidy" in notebook and "toy-detector" in (kernel / "kernel-metadata.json").read_text()


@pytest.mark.parametrize(
    "edit,field",
    [
        (("task: label_probabilities", "task: label_probability"), "task"),
        (("metric: roc_auc", "metric: roc-auc"), "metric"),
        (("  output: probability", "  outptu: probability"), "label_probabilities.outptu"),
        (("{{ essay_short }}", "{{ essay_short }} {% if %}"), "prompt.template"),
        (("prepare: prepare.py:tidy", "prepare: missing.py:tidy"), "prepare"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_file_and_field_exit_2(tmp_path, edit, field):
    (tmp_path / "prepare.py").write_text(PREPARE)
    spec = tmp_path / "competition.yaml"
    spec.write_text(SPEC.replace(*edit))
    r = run_kit("predict", spec, "--data", tmp_path / "rows.csv")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and str(spec) in r.stderr and f"'{field}'" in r.stderr, r.stderr


def test_a_template_reading_a_missing_column_is_named_before_any_model(tmp_path):
    spec = tmp_path / "competition.yaml"
    spec.write_text(SPEC.replace("prepare: prepare.py:tidy\n", "").replace("essay_short", "essay_text"))
    r = run_kit("predict", spec, "--data", tmp_path / "rows.csv")
    assert r.returncode == 2 and "'essay_text'" in r.stderr and "did you mean 'essay'" in r.stderr
