"""Every case of the catalogue (cases.py): a clear error naming file, row and column, or a usable result."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kaggle_kit.competitions import get
from kaggle_kit.competitions.base import check_submission
from kaggle_kit.errors import InputError

from .cases import CASES, SUBMISSION_TEST_IDS

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, case) -> Path:
    path = tmp_path / f"{case.name}.csv"
    path.write_bytes(case.content)
    return path


@pytest.mark.parametrize("case", [c for c in CASES if c.kind in ("test", "train")], ids=lambda c: c.name)
def test_reading(case, tmp_path):
    path = _write(tmp_path, case)
    comp = get(case.competition)
    if case.expect[0] == "ok":
        df = comp.read(path, labelled=case.kind == "train")
        assert case.expect[1](df)
        return
    _, row, column, words = case.expect
    with pytest.raises(InputError) as err:
        comp.read(path, labelled=case.kind == "train")
    e = err.value
    assert e.path == str(path) and str(path) in str(e)
    assert (e.row, e.column) == (row, column), str(e)
    assert words in str(e)
    if row is not None:
        assert f"row {row}" in str(e)
    if column is not None:
        assert f"column '{column}'" in str(e)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "submission"], ids=lambda c: c.name)
def test_validating_submissions(case, tmp_path):
    path = _write(tmp_path, case)
    problems = check_submission(get(case.competition), path, SUBMISSION_TEST_IDS[case.competition])
    if case.expect[0] == "valid":
        assert problems == []
    else:
        assert problems and any(case.expect[1] in p for p in problems), problems
        assert all(str(path) in p or p.startswith("...") for p in problems)


def test_catalogue_size_and_reliability_md_in_step():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    table = (ROOT / "docs" / "reliability.md").read_text()
    listed = set(re.findall(r"`((?:sci|lm|pr|sub)-[a-z0-9-]+)`", table))
    assert listed == {c.name for c in CASES}
