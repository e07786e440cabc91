"""The protocol every competition file fills in: read / examples / to_submission / fallback / score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Competition:
    """One Kaggle competition: its files, prompts, submission format, fallback row and metric."""

    name: str
    slug: str  # the Kaggle competition slug
    metric: str  # shown in summaries
    higher_is_better: bool
    task: str  # "choices" (score_choices over `labels`) or "generate"
    labels: tuple[str, ...]
    submission_columns: tuple[str, ...]
    read: Callable  # (path, labelled=False) -> DataFrame, every cell checked
    examples: Callable  # (df, tokenizer, max_length) -> list of model inputs
    to_submission: Callable  # (df, outputs) -> submission DataFrame; None/NaN outputs get the fallback
    fallback: Callable  # (ids) -> submission DataFrame of fallback rows
    score: Callable  # (submission_df, truth_df, **kw) -> float
    check_row: Callable  # (row dict) -> problem text or None
    completions: Callable  # (labelled df) -> the answer text per row, for training
    group_column: str  # rows sharing this column's (normalised) text stay on one side of a split
    max_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    # (df, tokenizer, max_length, n, shots) -> n-1 extra (prompts, perm) views for test-time augmentation
    views: Callable | None = None
    max_views: int = 1
    # (labelled df, k, exclude ids) -> a block of k solved examples put before each question
    shots: Callable | None = None
    # (df) -> the retrieval query per row; examples/views then take `context=` (one text per row)
    queries: Callable | None = None
    # (labelled df) -> the index of the right label per row (ensemble weights and temperatures are fitted on it)
    targets: Callable | None = None


def check_submission(comp: Competition, path, test_ids: list[str] | None = None) -> list[str]:
    """Every problem with a submission file: columns, each test id exactly once, each row's values."""
    import pandas as pd

    path = Path(path)
    try:
        sub = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        return [f"{path}: cannot read as CSV: {exc}"]
    problems = []
    if tuple(sub.columns) != comp.submission_columns:
        problems.append(f"{path}: columns {list(sub.columns)}, expected {list(comp.submission_columns)}")
        return problems
    dup = sorted(set(sub["id"][sub["id"].duplicated()]))
    if dup:
        problems.append(f"{path}: duplicate ids {dup[:10]}")
    if test_ids is not None:
        missing = sorted(set(test_ids) - set(sub["id"]), key=str)
        extra = sorted(set(sub["id"]) - set(test_ids), key=str)
        if missing:
            problems.append(f"{path}: {len(missing)} test ids missing: {missing[:20]}")
        if extra:
            problems.append(f"{path}: {len(extra)} ids not in the test file: {extra[:20]}")
    for i, row in enumerate(sub.to_dict("records"), start=1):
        bad = comp.check_row(row)
        if bad:
            problems.append(f"{path}, row {i} (id {row['id']}): {bad}")
            if len(problems) >= 25:
                problems.append("... (stopped after 25 problems)")
                break
    return problems


def aligned(sub, truth, sub_name="submission", truth_name="truth"):
    """Submission rows in the order of truth's ids; an InputError lists ids the submission lacks."""
    missing = sorted(set(truth["id"]) - set(sub["id"]), key=str)
    if missing:
        raise InputError(sub_name, f"{len(missing)} ids of {truth_name} are missing: {missing[:10]}", column="id")
    return sub.set_index("id").loc[list(truth["id"])].reset_index()
