"""Property-based fuzzing (hypothesis) of the readers, the validators and the submission writers."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaggle_kit.competitions import COMPETITIONS, get
from kaggle_kit.competitions.base import check_submission
from kaggle_kit.errors import InputError
from kaggle_kit.io import write_csv_atomic

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# cells that break naive CSV handling: quotes, separators, newlines, BOMs, NULs, emoji, pandas NA spellings
NASTY = st.sampled_from(
    [
        "",
        " ",
        '"',
        '""',
        ",",
        "\n",
        "\r\n",
        "\ufeff",
        "\x00",
        "NA",
        "nan",
        "None",
        "🙂",
        "[]",
        '["x"]',
        "[null]",
        "A",
        "1",
        "0.5",
    ]
)
CELL = st.one_of(st.text(max_size=30), NASTY)
COLUMNS = {
    "science_exam": ["id", "prompt", "A", "B", "C", "D", "E"],
    "lmsys": ["id", "prompt", "response_a", "response_b"],
    "prompt_recovery": ["id", "original_text", "rewritten_text"],
}


def _csv(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogatepass")


@SETTINGS
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_read_or_raise_input_error(tmp_path, data):
    path = tmp_path / "test.csv"
    path.write_bytes(data)
    for name in COMPETITIONS:
        try:
            get(name).read(path)
        except InputError as exc:
            assert str(path) in str(exc)


@SETTINGS
@given(name=st.sampled_from(sorted(COLUMNS)), rows=st.lists(st.lists(CELL, min_size=7, max_size=7), max_size=6))
def test_generated_tables_read_or_name_the_cell(tmp_path, name, rows):
    header = COLUMNS[name]
    path = tmp_path / "test.csv"
    try:
        path.write_bytes(_csv(header, [r[: len(header)] for r in rows]))
    except UnicodeEncodeError:
        return
    try:
        df = get(name).read(path)
    except InputError as exc:
        assert str(path) in str(exc)
        return
    # what reads fine is usable: ids unique and non-empty, every text column non-blank
    assert df["id"].is_unique and all(str(i).strip() for i in df["id"])
    text_cols = {"science_exam": ["prompt"], "lmsys": [], "prompt_recovery": ["original_text", "rewritten_text"]}
    for col in text_cols[name]:
        assert all(v.strip() for v in df[col])


FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e300]))


@SETTINGS
@given(probs=st.lists(st.lists(FLOAT, min_size=5, max_size=5), min_size=1, max_size=8))
def test_any_model_output_becomes_a_valid_science_submission(tmp_path, probs):
    _valid_submission(tmp_path, "science_exam", np.array(probs, dtype=float))


@SETTINGS
@given(probs=st.lists(st.lists(FLOAT, min_size=3, max_size=3), min_size=1, max_size=8))
def test_any_model_output_becomes_a_valid_lmsys_submission(tmp_path, probs):
    """Regression: an all-zero, inf or negative row was normalised into NaN probabilities (now: the prior)."""
    _valid_submission(tmp_path, "lmsys", np.array(probs, dtype=float))


@SETTINGS
@given(texts=st.lists(st.one_of(st.none(), CELL, st.text(max_size=300)), min_size=1, max_size=8))
def test_any_generated_text_becomes_a_valid_prompt_recovery_submission(tmp_path, texts):
    _valid_submission(tmp_path, "prompt_recovery", texts)


def _valid_submission(tmp_path, name, outputs):
    comp = get(name)
    ids = [str(i) for i in range(len(outputs))]
    sub = comp.to_submission(pd.DataFrame({"id": ids}), outputs)
    path = write_csv_atomic(sub, tmp_path / "submission.csv")
    assert check_submission(comp, path, ids) == []


@SETTINGS
@given(rows=st.lists(st.lists(CELL, min_size=4, max_size=4), max_size=8), name=st.sampled_from(sorted(COLUMNS)))
def test_validate_never_raises(tmp_path, rows, name):
    comp = get(name)
    path = tmp_path / "sub.csv"
    cols = list(comp.submission_columns)
    try:
        path.write_bytes(_csv(cols, [r[: len(cols)] for r in rows]))
    except UnicodeEncodeError:
        return
    problems = check_submission(comp, path, ["0", "1"])
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


@SETTINGS
@given(texts=st.lists(st.text(min_size=1, max_size=50), min_size=1, max_size=6))
def test_submission_text_survives_the_round_trip(tmp_path, texts):
    """Whatever a model generates (quotes, newlines, commas, 'NA') is read back exactly as it was written.

    Regression: a lone '\\r' in a generated prompt was written unquoted, so readers split the row there
    (a duplicate id and a broken submission) until write_csv_atomic quoted such frames.
    """
    texts = [t.replace("\x00", "") for t in texts]
    sub = pd.DataFrame({"id": [str(i) for i in range(len(texts))], "rewrite_prompt": texts})
    try:
        path = write_csv_atomic(sub, tmp_path / "sub.csv")
    except UnicodeEncodeError:  # lone surrogates cannot be UTF-8; the kit's outputs come from a tokenizer
        return
    back = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    assert back["rewrite_prompt"].tolist() == texts
