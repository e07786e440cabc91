"""What every competition does the same way, whatever its task type: read and check its files, render
its prompts, write and check its submission, score it. A task type (tasks/) adds how rows become model
work and how the outputs become submission cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import Column, read_csv
from . import template
from .spec import Spec, load_hook


class Competition:
    """One competition: a spec and its task type's behaviour.

    Capabilities are attributes, None where the task has none: `views` (TTA), `shots` (solved
    examples), `queries` (retrieval), `targets` (label indices: ensemble weights, temperatures), `mean_text`
    (a constant text prediction: the mean prompt)."""

    kind = ""  # the task type (spec.task)
    task = ""  # the engine it runs on: "choices" (label probabilities) or "generate"
    labels: tuple[str, ...] = ()
    max_new_tokens = 0
    stop: tuple[str, ...] = ()
    max_views = 1
    views = None
    shots = None
    queries = None
    targets = None
    mean_text = None

    def __init__(self, spec: Spec, settings):
        self.spec, self.settings = spec, settings
        self.name, self.slug = spec.name, spec.slug
        self.id_column = spec.id_column
        self.submission_columns = tuple(spec.submission)
        self.group_column = spec.group_column or self.id_column
        self.metric, self.higher_is_better = metric_name(spec.metric)

    # --- files -------------------------------------------------------------------------------------
    def file(self, role: str, data_dir) -> Path:
        """The path of one of the competition's files ('test', 'train', ...) under `data_dir`."""
        name = getattr(self.spec.files, role)
        if name is None:
            raise InputError(data_dir, f"{self.name} has no {role} file")
        return Path(data_dir) / name

    def read(self, path, labelled: bool = False):
        """The rows of a test (or, `labelled`, train) file, every cell checked, reshaped by the spec's
        `prepare` when it has one; the id column is unique and non-empty."""
        spec = self.spec
        ids = spec.id if isinstance(spec.id, list) else [spec.id]
        kinds = {} if spec.prepare else {c: "id" for c in ids}  # prepare makes the id column itself
        kinds.update(spec.columns)
        if labelled:
            kinds.update(spec.labelled_columns)
        single = len(ids) == 1 and not spec.prepare
        df = read_csv(path, [Column(c, k) for c, k in kinds.items()], id_column=ids[0] if single else "")
        if spec.prepare:
            df = load_hook(spec, "prepare")(df, labelled).reset_index(drop=True)
        if len(ids) > 1:
            df[self.id_column] = df[ids].astype(str).agg("_".join, axis=1)
        if not single:
            _check_unique(path, df, self.id_column)
        self.check_labelled(path, df) if labelled else None
        return df

    def check_labelled(self, path, df) -> None:
        """Task-specific checks of a labelled file's answer columns (InputError naming row and column)."""

    # --- prompts -----------------------------------------------------------------------------------
    def fields(self, df, tokenizer, max_length: int, **extra) -> list[dict]:
        """Per row, the names its prompt template can read: the row's columns, the spec's `fields`
        function's (computed with the tokenizer), and `extra` (one value per row, or one for all)."""
        rows = df.to_dict("records")
        for r in rows:
            r["row"] = dict(r)  # every column by name, also those that are no Jinja name ('Category:Misconception')
        if self.spec.fields:
            more = load_hook(self.spec, "fields")(df, tokenizer, max_length)
            for key, values in more.items():
                for r, v in zip(rows, values):
                    r[key] = v
        for key, value in extra.items():
            for i, r in enumerate(rows):
                r[key] = value[i] if isinstance(value, list) else value
        return rows

    def render(self, tokenizer, rows: list[dict]) -> list[str]:
        """Each row's model input: the spec's template through the chat format."""
        from ..templates import render

        p = self.spec.prompt
        return [render(tokenizer, text, p.system, p.chat_format) for text in template.render_rows(p.template, rows)]

    def examples(self, df, tokenizer, max_length: int = 2048, shots: str = "", **extra) -> list[str]:
        """One model input per row."""
        return self.render(tokenizer, self.fields(df, tokenizer, max_length, shots=shots, **extra))

    def train_pairs(self, df, tokenizer, max_length: int, views: int = 1, data_dir: str = "."):
        """(prompts, completions, perms) of labelled rows, plus each row under views - 1 more views with
        its label mapped to where the view shows it (LMSYS paired rows: A/B swapped, A<->B label; the gold
        teams' most consistent gain). perms[k][j] is the original label shown at label j in row k's view."""
        from ..errors import ConfigError

        if views > 1 and (self.views is None or views > self.max_views):
            raise ConfigError("views", f"{self.name} supports at most {self.max_views} training view(s), got {views}")
        prompts, completions = self.examples(df, tokenizer, max_length), self.completions(df)
        labels = list(self.labels)
        perms = [list(range(len(labels)))] * len(df)
        if views == 1:
            return prompts, completions, perms
        base = list(completions)
        for view_prompts, perm in self.views(df, tokenizer, max_length, views):
            row_perms = perm if perm and not isinstance(perm[0], int) else [perm] * len(df)
            keep = [i for i, q in enumerate(row_perms) if q is not None]  # rows with fewer options sit a view out
            prompts = prompts + [view_prompts[i] for i in keep]
            completions = completions + [labels[row_perms[i].index(labels.index(base[i]))] for i in keep]
            perms = perms + [row_perms[i] for i in keep]
        return prompts, completions, perms

    def items(self, df, data_dir: str = ".") -> int:
        """How many items the model work of df's rows has (its rows; rank_candidates: its pairs)."""
        return len(df)

    def assemble(self, df, results: list, data_dir: str = "."):
        """The outputs of df's rows from its items' results in item order (None: not reached)."""
        raise NotImplementedError

    # --- submission --------------------------------------------------------------------------------
    def fallback(self, ids, df=None):
        """The constant submission: the spec's fallback row for every id (`df`: the rows, whose columns
        the submission repeats, as AIMO's repeats the problem id)."""
        row = self.fallback_row()
        return self.frame(ids, {c: [row[c]] * len(ids) for c in self.submission_columns if c in row}, df)

    def frame(self, ids, values: dict, df=None):
        """A submission frame in the spec's column order: the ids, the predicted columns in `values`, and
        any other submission column copied from the rows `df` (or left empty without them)."""
        import pandas as pd

        ids = list(ids)
        cols = {}
        for c in self.submission_columns:
            if c == self.id_column:
                cols[c] = ids
            elif c in values:
                cols[c] = list(values[c])
            elif df is not None and c in df.columns:
                cols[c] = df[c].tolist()
            else:
                cols[c] = [""] * len(ids)
        return pd.DataFrame(cols)

    def fallback_row(self) -> dict:
        """The fallback cell of each submission column (the spec's `fallback`)."""
        return dict(self.spec.fallback)

    def check_row(self, row: dict) -> str | None:
        """What is wrong with one submission row, or None."""
        raise NotImplementedError

    @property
    def scores_with_model(self) -> bool:
        """True when the metric needs the model itself (perplexity), so no submission file can be scored."""
        return False

    def score(self, sub, truth, **kw) -> float:
        """The competition metric of a submission against labelled rows, matched by id."""
        raise NotImplementedError

    def evaluate(self, model, tokenizer, df, run, **run_kw) -> float:
        """The metric of the model on labelled rows `df` (training's evaluation): predict, then score."""
        from ..infer import run_task

        outputs, _ = run_task(self.work(model, tokenizer, df, run), model, **run_kw)
        kw = {}
        if self.spec.metric == "scs":
            from ..embed import scorer

            kw["embed"] = scorer()
        return self.score(self.to_submission(df, outputs), df, **kw)

    def aligned(self, sub, truth):
        """`sub`'s rows in the order of truth's ids (an InputError lists ids it lacks)."""
        return aligned(sub, truth, id_column=self.id_column)


def metric_name(metric: str) -> tuple[str, bool]:
    """(the metric as a summary table shows it, whether higher is better)."""
    lower = {"log_loss": "log loss", "perplexity": "perplexity"}
    if metric in lower:
        return lower[metric], False
    if metric.startswith("map@"):
        return "MAP@" + metric[4:], True
    shown = {"scs": "SCS", "roc_auc": "ROC AUC", "chrf": "chrF", "bleu": "BLEU"}
    if metric.startswith("roc_auc_by:"):
        return f"ROC AUC per {metric.split(':', 1)[1]}", True
    return shown.get(metric, metric.split(":")[0]), True


def _check_unique(path, df, column: str) -> None:
    if column not in df.columns:
        raise InputError(path, "no id column after prepare", column=column)
    values = df[column].astype(str)
    empty = np.flatnonzero(values.str.strip() == "")
    if len(empty):
        raise InputError(path, "empty id", row=int(empty[0]) + 1, column=column)
    dup = values[values.duplicated(keep=False)]
    if len(dup):
        raise InputError(path, f"duplicate ids {sorted(set(dup))[:5]}", column=column, expected="each id once")


def check_submission(comp: Competition, path, test_ids: list[str] | None = None) -> list[str]:
    """Every problem with a submission file: columns, each test id exactly once, each row's values."""
    import pandas as pd

    from ..io import read_submission

    path = Path(path)
    try:
        sub = read_submission(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        return [f"{path}: cannot read as CSV: {exc}"]
    problems = []
    if tuple(sub.columns) != comp.submission_columns:
        problems.append(f"{path}: columns {list(sub.columns)}, expected {list(comp.submission_columns)}")
        return problems
    key = comp.id_column
    dup = sorted(set(sub[key][sub[key].duplicated()]))
    if dup:
        problems.append(f"{path}: duplicate ids {dup[:10]}")
    if test_ids is not None:
        missing = sorted(set(test_ids) - set(sub[key]), key=str)
        extra = sorted(set(sub[key]) - set(test_ids), key=str)
        if missing:
            problems.append(f"{path}: {len(missing)} test ids missing: {missing[:20]}")
        if extra:
            problems.append(f"{path}: {len(extra)} ids not in the test file: {extra[:20]}")
    for i, row in enumerate(sub.to_dict("records"), start=1):
        bad = comp.check_row(row)
        if bad:
            problems.append(f"{path}, row {i} (id {row[key]}): {bad}")
            if len(problems) >= 25:
                problems.append("... (stopped after 25 problems)")
                break
    return problems


def aligned(sub, truth, sub_name="submission", truth_name="truth", id_column: str = "id"):
    """Submission rows in the order of truth's ids; an InputError lists ids the submission lacks."""
    missing = sorted(set(truth[id_column]) - set(sub[id_column]), key=str)
    if missing:
        raise InputError(sub_name, f"{len(missing)} ids of {truth_name} are missing: {missing[:10]}", column=id_column)
    return sub.set_index(id_column).loc[list(truth[id_column])].reset_index()
