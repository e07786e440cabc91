"""multiple_choice: N options in columns (their number may vary per row: an empty cell is no option), the
model's next-token probability of each option's label; the top-k labels (MAP@k) or one label (accuracy).

An empty option is masked out (probability 0), never written to a submission and never shuffled into
another position by TTA: a row's views rotate only the options it really has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ..base import Competition
from ..spec import SpecError
from .common import Run, need_columns

# Names a template may read besides the row's columns: the row's (label, text) options, its labels as
# "A, B, C, D or E", solved examples (shots) and retrieved passages (context).
FIELDS = ("options", "labels_text", "shots", "context")


@dataclass
class Settings:
    """The `multiple_choice:` block of a spec."""

    options: list  # the option columns, in label order
    question: str  # the column holding the question (shots and retrieval queries read it)
    answer: str | None = "answer"  # the labelled file's column holding the right label
    labels: list | None = None  # the label each option column is shown and written as; None = the column names
    top_k: int = 1  # labels written per row, best first (MAP@k: k; accuracy: 1)
    output: str = "prediction"  # the submission column
    tta: bool = True  # option-order views: cyclic shifts of each row's own options


def check_settings(spec, s: Settings) -> None:
    """The block's columns exist, labels are one per option, top_k fits."""
    if not isinstance(s.options, list) or len(s.options) < 2:
        raise SpecError(spec.path, "multiple_choice.options", "a list of at least two option columns")
    need_columns(
        spec, "multiple_choice", {"question": s.question, **{f"options[{i}]": c for i, c in enumerate(s.options)}}
    )
    if s.labels is not None and len(s.labels) != len(s.options):
        raise SpecError(spec.path, "multiple_choice.labels", f"one label per option ({len(s.options)})")
    if not 1 <= s.top_k <= len(s.options):
        raise SpecError(spec.path, "multiple_choice.top_k", f"between 1 and {len(s.options)}, got {s.top_k}")
    if s.output not in spec.submission:
        raise SpecError(spec.path, "multiple_choice.output", f"{s.output!r} is not a submission column")


class Task(Competition):
    """A multiple-choice competition (Science Exam)."""

    kind = "multiple_choice"
    task = "choices"

    def __init__(self, spec, settings: Settings):
        super().__init__(spec, settings)
        self.labels = tuple(str(x) for x in (settings.labels or settings.options))
        self.max_views = len(self.labels) if settings.tta else 1
        if not settings.tta:
            self.views = None

    # --- rows --------------------------------------------------------------------------------------
    def masks(self, df) -> np.ndarray:
        """(N, K): which options a row has (a non-blank cell; every option where df lacks the columns)."""
        if not set(self.settings.options) <= set(df.columns):
            return np.ones((len(df), len(self.labels)), dtype=bool)
        return np.array([[str(v).strip() != "" for v in r] for r in df[self.settings.options].to_numpy()], dtype=bool)

    def fields(self, df, tokenizer, max_length: int, **extra) -> list[dict]:
        rows = super().fields(df, tokenizer, max_length, **extra)
        for r in rows:
            opts = [(lab, r[col]) for lab, col in zip(self.labels, self.settings.options) if str(r[col]).strip()]
            r["options"] = opts
            names = [lab for lab, _ in opts]
            r["labels_text"] = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
            r.setdefault("context", "")
        return rows

    def views(self, df, tokenizer, max_length: int = 2048, n: int = 5, shots: str = "", **extra):
        """Option-order TTA: views 1..n-1 shift each row's own options cyclically by k (with n equal to a
        row's option count every option appears once at every label, so a preference for a label
        position cancels out). A row with fewer options than k + 1 sits that view out."""
        mask = self.masks(df)
        out = []
        for k in range(1, n):
            shifted, perms = df.copy(), []
            cols = self.settings.options
            for i, row_mask in enumerate(mask):
                have = np.flatnonzero(row_mask).tolist()
                if k >= len(have):
                    perms.append(None)
                    continue
                perm = list(range(len(cols)))
                for j, pos in enumerate(have):  # label at `pos` shows the option k places further on
                    perm[pos] = have[(j + k) % len(have)]
                perms.append(perm)
                values = df.iloc[i][cols].tolist()
                for pos in have:
                    shifted.iat[i, shifted.columns.get_loc(cols[pos])] = values[perm[pos]]
            out.append((self.examples(shifted, tokenizer, max_length, shots, **extra), perms))
        return out

    def queries(self, df) -> list[str]:
        """Retrieval query per row: the question and its options (the options name what to look up)."""
        cols = [self.settings.question, *self.settings.options]
        return [" ".join(str(v) for v in r) for r in df[cols].to_numpy()]

    def shots(self, train, k: int, exclude=(), seed: int = 0) -> str:
        """k solved examples from a labelled frame, balanced over the answer labels (unbalanced shots
        hurt): labels taken in turn A, B, C, ...; ids in `exclude` never used."""
        s = self.settings
        pool = train[~train[self.id_column].isin(set(exclude))]
        by_label = {x: pool[pool[s.answer] == x].sample(frac=1.0, random_state=seed) for x in self.labels}
        taken, blocks = dict.fromkeys(self.labels, 0), []
        for i in range(k * len(self.labels)):
            if len(blocks) == k:
                break
            x = self.labels[i % len(self.labels)]
            if taken[x] < len(by_label[x]):
                r = by_label[x].iloc[taken[x]]
                taken[x] += 1
                opts = "\n".join(f"{lab}) {r[col]}" for lab, col in zip(self.labels, s.options) if str(r[col]).strip())
                blocks.append(f"Question: {r[s.question]}\n{opts}\nAnswer: {x}\n\n")
        return ("Solved examples:\n\n" + "".join(blocks) + "Now this one.\n") if blocks else ""

    def check_labelled(self, path, df) -> None:
        answers = df[self.settings.answer].astype(str).str.strip().tolist()
        mask = self.masks(df)
        for i, a in enumerate(answers):
            if a not in self.labels or not mask[i][self.labels.index(a)]:
                want = f"one of the letters of the row's non-empty options ({' '.join(self.labels)})"
                raise InputError(path, "bad answer", row=i + 1, column=self.settings.answer, expected=want, got=a)
            df.iat[i, df.columns.get_loc(self.settings.answer)] = a

    def targets(self, df) -> np.ndarray:
        """Index of the answer label per row."""
        return np.array([self.labels.index(x) for x in df[self.settings.answer]])

    def completions(self, df) -> list[str]:
        """The answer label per row."""
        return df[self.settings.answer].tolist()

    # --- model work --------------------------------------------------------------------------------
    def work(self, model, tokenizer, df, run: Run):
        """The choice Task over each row's options (masked), with run.tta option-order views."""
        choice_task = run.tasks().choice_task
        extra = dict(run.extra, **({"context": run.context} if run.context else {}))
        prompts = self.examples(df, tokenizer, run.max_length, run.shots, **extra)
        views = self.views(df, tokenizer, run.max_length, run.tta, run.shots, **extra) if run.tta > 1 else None
        mask = self.masks(df)
        return choice_task(
            model, tokenizer, prompts, list(self.labels), temperature=run.temperature, max_length=run.max_length,
            views=views, masks=None if mask.all() else mask,
        )  # fmt: skip

    def assemble(self, df, results: list, data_dir: str = "."):
        """(N, K) probabilities from per-row results (NaN rows where a result is missing)."""
        from ...infer.primitives import probs_from_results

        return probs_from_results(results, len(self.labels))

    # --- submission --------------------------------------------------------------------------------
    def to_submission(self, df, probs):
        """id + the top_k labels of the options each row has; rows without probabilities get the fallback."""
        mask, k = self.masks(df), self.settings.top_k
        preds = []
        for p, have in zip(np.asarray(probs, dtype=float), mask):
            if np.isnan(p).any():
                preds.append(self.fallback_row()[self.settings.output])
                continue
            order = [j for j in np.argsort(-p, kind="stable") if have[j]]
            preds.append(" ".join(self.labels[j] for j in order[:k]))
        return self.frame(df[self.id_column], {self.settings.output: preds}, df)

    def fallback_row(self) -> dict:
        return {self.settings.output: " ".join(self.labels[: self.settings.top_k]), **self.spec.fallback}

    def check_row(self, row):
        """A prediction is 1..top_k distinct space-separated labels."""
        labels = str(row[self.settings.output]).split()
        if not labels:
            return "empty prediction"
        bad = [x for x in labels if x not in self.labels]
        if bad:
            return f"labels {bad} not in {self.labels[0]}-{self.labels[-1]} ({' '.join(self.labels)})"
        return f"more than {self.settings.top_k} labels" if len(labels) > self.settings.top_k else None

    def score(self, sub, truth, **_):
        """MAP@k (or accuracy of the first label) against truth's answers, matched by id."""
        from ...metrics import accuracy, map_at_k

        sub = self.aligned(sub, truth)
        preds, answers = sub[self.settings.output].tolist(), truth[self.settings.answer].tolist()
        if self.spec.metric.startswith("map@"):
            return map_at_k(preds, answers, k=int(self.spec.metric[4:]))
        return accuracy([str(p).split()[0] if str(p).split() else "" for p in preds], answers)
