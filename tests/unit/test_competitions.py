"""The shipped competitions: each a spec file, read, submitted, validated and scored the same way."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import competitions
from kaggle_kit.competitions import COMPETITIONS, check_submission, get
from kaggle_kit.errors import InputError, KitError

from ..conftest import DATA, SHARED_DATA

LABELLED = [n for n in COMPETITIONS if get(n).spec.files.train]


def test_dict_matches_the_specs_folder():
    folder = Path(competitions.__file__).parent / "specs"
    assert set(COMPETITIONS) == {p.parent.name for p in folder.glob("*/competition.yaml")}
    assert all(get(key).name == key and path.parent.name == key for key, path in COMPETITIONS.items())
    assert {p.name for p in Path(competitions.__file__).parent.glob("*.py")} <= {
        "__init__.py", "base.py", "spec.py", "template.py", "draft.py"
    }  # fmt: skip  # no competition is a module any more


def test_unknown_competition_lists_valid():
    with pytest.raises(KitError, match="science_exam, lmsys, prompt_recovery.*alpaca, or the path of a spec file"):
        get("titanic")


@pytest.mark.parametrize("name", list(COMPETITIONS))
def test_data_samples_read_and_their_sample_submission_is_valid(name):
    comp = get(name)
    folder = DATA / name
    test = comp.read(comp.file("test", folder))
    assert len(test) >= 1
    if comp.spec.files.sample_submission:
        sample = pd.read_csv(comp.file("sample_submission", folder), dtype=str, keep_default_na=False)
        assert tuple(sample.columns) == comp.submission_columns
        assert check_submission(comp, comp.file("sample_submission", folder), test[comp.id_column].tolist()) == []
    if comp.spec.files.train:
        assert len(comp.read(comp.file("train", folder), labelled=True)) >= 10


@pytest.mark.parametrize(
    "name,path",
    [
        ("science_exam", "science_exam/train.csv"),
        ("science_exam", "science_exam/extra_radek_6000_first3000.csv"),
        ("lmsys", "lmsys/train_first100.csv"),
        ("prompt_recovery", "prompt_recovery/pedromb_gemma7b_kaggle_format.csv"),
        ("eedi", "eedi/train.csv"),
        ("llm_detect", "llm_detect/train_essays.csv"),
        ("aimo", "aimo/aimo2/reference.csv"),
    ],
)
def test_real_public_files_read(name, path):
    if not (SHARED_DATA / path).exists():
        pytest.skip("../shared/data not present")
    df = get(name).read(SHARED_DATA / path, labelled=True)
    assert len(df) >= 10


@pytest.mark.parametrize("name", list(COMPETITIONS))
def test_fallback_is_a_valid_submission(name, tmp_path):
    comp = get(name)
    ids = [str(i) for i in range(5)]
    comp.fallback(ids).to_csv(tmp_path / "s.csv", index=False)
    assert check_submission(comp, tmp_path / "s.csv", ids) == []


def test_science_submission_ranks_letters_and_falls_back():
    df = pd.DataFrame({"id": ["a", "b"], **{x: ["opt"] * 2 for x in "ABCDE"}})
    probs = np.array([[0.1, 0.2, 0.05, 0.6, 0.05], [np.nan] * 5])
    sub = get("science_exam").to_submission(df, probs)
    assert sub["prediction"].tolist() == ["D B A", "A B C"]


def test_lmsys_submission_rows_sum_to_one_and_nan_gets_prior():
    comp = get("lmsys")
    sub = comp.to_submission(pd.DataFrame({"id": ["1", "2"]}), np.array([[2.0, 1.0, 1.0], [np.nan] * 3]))
    p = sub[list(comp.class_names)].to_numpy()
    assert np.allclose(p.sum(axis=1), 1)
    assert np.allclose(p[1], np.array(comp.prior) / np.sum(comp.prior))


def test_lmsys_label_row_with_two_winners_is_named(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text(
        "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n"
        '1,"[""q""]","[""a""]","[""b""]",1,0,0\n2,"[""q""]","[""a""]","[""b""]",1,1,0\n'
    )
    with pytest.raises(InputError) as e:
        get("lmsys").read(p, labelled=True)
    assert e.value.row == 2


def test_prompt_recovery_never_empty():
    comp = get("prompt_recovery")
    sub = comp.to_submission(pd.DataFrame({"id": ["1", "2", "3"]}), ["Instruction: make it a poem", "  ", None])
    assert sub["rewrite_prompt"].tolist() == ["make it a poem", comp.mean_text, comp.mean_text]


def test_validate_lists_missing_and_bad_rows(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("id,winner_model_a,winner_model_b,winner_tie\n1,0.5,0.5,0.5\n2,0.2,0.3,0.5\n")
    problems = check_submission(get("lmsys"), p, ["1", "2", "3", "4"])
    assert any("2 test ids missing: ['3', '4']" in x for x in problems)
    assert any("row 1 (id 1): probabilities sum to 1.5000" in x for x in problems)


def test_validate_wrong_columns_and_bad_letters(tmp_path):
    comp = get("science_exam")
    p = tmp_path / "s.csv"
    p.write_text("id,answer\n1,A\n")
    assert "expected ['id', 'prediction']" in check_submission(comp, p)[0]
    p.write_text("id,prediction\n1,A F\n2,\n3,A B C D\n")
    problems = check_submission(comp, p)
    assert "labels ['F'] not in A-E" in problems[0] and "empty prediction" in problems[1]
    assert "more than 3 labels" in problems[2]


def test_score_with_missing_ids_is_an_error():
    truth = pd.DataFrame({"id": ["1", "2"], "answer": ["A", "B"]})
    sub = pd.DataFrame({"id": ["1"], "prediction": ["A"]})
    with pytest.raises(InputError, match=r"missing: \['2'\]"):
        get("science_exam").score(sub, truth)


def test_science_and_lmsys_scores_on_known_rows():
    truth = pd.DataFrame({"id": ["1", "2"], "answer": ["A", "C"]})
    sub = pd.DataFrame({"id": ["2", "1"], "prediction": ["B C A", "A B C"]})  # order differs from truth
    assert get("science_exam").score(sub, truth) == pytest.approx((1 + 0.5) / 2)
    lt = pd.DataFrame({"id": ["1"], "winner_model_a": [0], "winner_model_b": [1], "winner_tie": [0]})
    ls = pd.DataFrame({"id": ["1"], "winner_model_a": ["0.25"], "winner_model_b": ["0.5"], "winner_tie": ["0.25"]})
    assert get("lmsys").score(ls, lt) == pytest.approx(np.log(2))
