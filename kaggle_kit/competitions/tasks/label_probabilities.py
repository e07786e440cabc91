"""label_probabilities: one probability per class, read from the model's next-token probabilities of
each class's label token (Yes/No, A/B/tie, N classes); written as a probability column per class, one
probability column, or the most probable class's name.

Declared symmetries are TTA views: LMSYS's responses swapped, with the A and B classes swapped back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from ..base import Competition
from ..spec import SpecError
from .common import Run, need_columns

FIELDS = ("shots", "context")
OUTPUTS = ("columns", "probability", "label", "ranked")


@dataclass
class Settings:
    """The `label_probabilities:` block of a spec."""

    classes: list  # per class {label: the token the model answers with, name: how files call the class}
    target: str | None = (
        None  # labelled column holding each row's class name; None = one-hot columns named by the classes
    )
    output: str = "columns"  # 'columns' (a probability column per class), 'probability' (p of `positive`),
    #   'label' (the most probable class's name), 'ranked' (the top_k class names, best first)
    column: str | None = None  # the submission column for 'probability' / 'label' / 'ranked'
    positive: str | None = None  # 'probability': the class whose probability is written
    top_k: int = 1  # 'ranked': class names written per row
    prior: list | None = None  # class probabilities of the fallback row (default: uniform)
    symmetries: list = field(default_factory=list)  # TTA views: {swap: [column, column], classes: [shown order]}


def check_settings(spec, s: Settings) -> None:
    """Classes are well formed; output, columns and symmetries are consistent with them."""
    where = "label_probabilities"
    if not isinstance(s.classes, list) or len(s.classes) < 2:
        raise SpecError(spec.path, f"{where}.classes", "a list of at least two {label, name} entries")
    for i, c in enumerate(s.classes):
        if not isinstance(c, dict) or set(c) != {"label", "name"}:
            raise SpecError(spec.path, f"{where}.classes[{i}]", f"needs exactly 'label' and 'name', got {c!r}")
    names = [str(c["name"]) for c in s.classes]
    if s.output not in OUTPUTS:
        raise SpecError(spec.path, f"{where}.output", f"{s.output!r} is not one of {OUTPUTS}")
    if s.output == "columns" and [c for c in spec.submission[1:]] != names:
        raise SpecError(spec.path, "submission", f"output 'columns' writes one column per class: {names}")
    if s.output != "columns" and s.column not in spec.submission:
        raise SpecError(spec.path, f"{where}.column", f"{s.column!r} is not a submission column")
    if s.output == "probability" and str(s.positive) not in names:
        raise SpecError(spec.path, f"{where}.positive", f"{s.positive!r} is not a class name {names}")
    if s.prior is not None and (len(s.prior) != len(names) or abs(sum(s.prior) - 1) > 1e-6):
        raise SpecError(spec.path, f"{where}.prior", f"{len(names)} probabilities summing to 1")
    labels = [str(c["label"]) for c in s.classes]
    for i, sym in enumerate(s.symmetries):
        ok = (
            isinstance(sym, dict)
            and set(sym) == {"swap", "classes"}
            and sorted(map(str, sym["classes"])) == sorted(labels)
        )
        if not ok or len(sym["swap"]) != 2:
            raise SpecError(
                spec.path, f"{where}.symmetries[{i}]", f"{{swap: [column, column], classes: a reordering of {labels}}}"
            )
        need_columns(spec, f"{where}.symmetries[{i}]", {"swap": sym["swap"][0], "swap ": sym["swap"][1]})


class Task(Competition):
    """A competition scored on class probabilities (LMSYS, LLM-Detect, WSDM)."""

    kind = "label_probabilities"
    task = "choices"

    def __init__(self, spec, settings: Settings):
        super().__init__(spec, settings)
        self.labels = tuple(str(c["label"]) for c in settings.classes)
        self.class_names = tuple(str(c["name"]) for c in settings.classes)
        self.prior = tuple(settings.prior or [1.0 / len(self.labels)] * len(self.labels))
        self.max_views = 1 + len(settings.symmetries)
        if not settings.symmetries:
            self.views = None

    # --- rows --------------------------------------------------------------------------------------
    def check_labelled(self, path, df) -> None:
        s = self.settings
        if s.target is None:  # one-hot columns, exactly one set
            onehot = df[list(self.class_names)].astype(int).to_numpy()
            bad = np.flatnonzero(onehot.sum(axis=1) != 1)
            if len(bad):
                why = f"exactly one winner (one of {list(self.class_names)}) must be 1"
                raise InputError(
                    path, why, row=int(bad[0]) + 1, column=self.class_names[0], got=onehot[bad[0]].tolist()
                )
            return
        values = df[s.target].astype(str).str.strip()
        for i, v in enumerate(values):
            if v not in self.class_names:
                raise InputError(
                    path, "bad class", row=i + 1, column=s.target, expected=f"one of {list(self.class_names)}", got=v
                )

    def targets(self, df) -> np.ndarray:
        """The class index per row."""
        if self.settings.target is None:
            return df[list(self.class_names)].astype(int).to_numpy().argmax(axis=1)
        return np.array([self.class_names.index(str(v).strip()) for v in df[self.settings.target]])

    def completions(self, df) -> list[str]:
        """The label token of each row's class."""
        return [self.labels[k] for k in self.targets(df)]

    def views(self, df, tokenizer, max_length: int = 2048, n: int = 2, shots: str = "", **extra):
        """The declared symmetries, in order, up to n - 1 of them: columns swapped, classes mapped back."""
        out = []
        for sym in self.settings.symmetries[: max(0, n - 1)]:
            a, b = sym["swap"]
            swapped = df.rename(columns={a: b, b: a})
            perm = [self.labels.index(str(x)) for x in sym["classes"]]
            out.append((self.examples(swapped, tokenizer, max_length, shots, **extra), perm))
        return out

    # --- model work --------------------------------------------------------------------------------
    def work(self, model, tokenizer, df, run: Run):
        """The choice Task over the class labels, with up to run.tta - 1 symmetric views."""
        choice_task = run.tasks().choice_task
        extra = dict(run.extra, **({"context": run.context} if run.context else {}))
        prompts = self.examples(df, tokenizer, run.max_length, run.shots, **extra)
        views = self.views(df, tokenizer, run.max_length, run.tta, run.shots, **extra) if run.tta > 1 else None
        return choice_task(
            model, tokenizer, prompts, list(self.labels), temperature=run.temperature, max_length=run.max_length,
            views=views,
        )  # fmt: skip

    def assemble(self, df, results: list, data_dir: str = "."):
        from ...infer.primitives import probs_from_results

        return probs_from_results(results, len(self.labels))

    # --- submission --------------------------------------------------------------------------------
    def probabilities(self, probs) -> np.ndarray:
        """Rows normalised to sum 1; a row that cannot be (NaN, inf, negative, all zero) gets the prior."""
        p = np.asarray(probs, dtype=float).copy()
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | ~(p.sum(axis=1) > 0) | ~np.isfinite(p.sum(axis=1))
        p[bad] = self.prior
        return p / p.sum(axis=1, keepdims=True)

    def to_submission(self, df, probs):
        p, s = self.probabilities(probs), self.settings
        if s.output == "columns":
            values = {name: p[:, k] for k, name in enumerate(self.class_names)}
        elif s.output == "probability":
            values = {s.column: p[:, self.class_names.index(str(s.positive))]}
        elif s.output == "label":
            values = {s.column: [self.class_names[k] for k in p.argmax(axis=1)]}
        else:  # ranked: the top_k class names, best first
            order = np.argsort(-p, axis=1, kind="stable")[:, : s.top_k]
            values = {s.column: [" ".join(self.class_names[k] for k in row) for row in order]}
        return self.frame(df[self.id_column], values, df)

    def fallback_row(self) -> dict:
        s = self.settings
        if s.output == "columns":
            row = dict(zip(self.class_names, self.prior))
        elif s.output == "probability":
            row = {s.column: self.prior[self.class_names.index(str(s.positive))]}
        elif s.output == "label":
            row = {s.column: self.class_names[int(np.argmax(self.prior))]}
        else:
            row = {
                s.column: " ".join(
                    self.class_names[k] for k in np.argsort(-np.array(self.prior), kind="stable")[: s.top_k]
                )
            }
        return {**row, **self.spec.fallback}

    def check_row(self, row):
        s = self.settings
        if s.output == "label":
            v = str(row[s.column]).strip()
            return None if v in self.class_names else f"{v!r} is not one of {list(self.class_names)}"
        if s.output == "ranked":
            names = str(row[s.column]).split()
            bad = [v for v in names if v not in self.class_names]
            if not names or bad or len(names) > s.top_k:
                return f"1-{s.top_k} of {list(self.class_names)}, got {row[s.column]!r}"
            return None
        cols = list(self.class_names) if s.output == "columns" else [s.column]
        try:
            p = [float(row[c]) for c in cols]
        except ValueError:
            return "a probability is not a number"
        if any(not (0.0 <= x <= 1.0) for x in p):
            return f"probabilities {p} not in [0, 1]"
        if s.output == "columns" and abs(sum(p) - 1.0) > 1e-3:
            return f"probabilities sum to {sum(p):.4f}, not 1"
        return None

    def score(self, sub, truth, **_):
        """log loss, ROC AUC (overall or averaged per group column) or accuracy, matched by id."""
        from ...metrics import accuracy, grouped_roc_auc, log_loss, roc_auc

        sub, y, s, metric = self.aligned(sub, truth), self.targets(truth), self.settings, self.spec.metric
        if metric == "log_loss":
            cols = list(self.class_names) if s.output == "columns" else None
            if cols is None:
                raise InputError(self.spec.path, "log_loss needs output 'columns'")
            return log_loss(y, sub[cols].astype(float).to_numpy())
        if metric.startswith("roc_auc"):
            positive = self.class_names.index(str(s.positive))
            scores = sub[s.column].astype(float).to_numpy()
            if metric == "roc_auc":
                return roc_auc((y == positive).astype(int), scores)
            return grouped_roc_auc((y == positive).astype(int), scores, truth[metric.split(":", 1)[1]].to_numpy())
        preds = (
            sub[s.column]
            if s.output == "label"
            else [self.class_names[k] for k in sub[list(self.class_names)].astype(float).to_numpy().argmax(1)]
        )
        return accuracy(list(preds), [self.class_names[k] for k in y])
