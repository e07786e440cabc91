"""generate_text: free text scored against a reference (Prompt Recovery's sharpened cosine similarity,
chrF or BLEU through sacrebleu, exact match); the fallback is a constant text (the mean prompt), which
can also be appended to every generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...errors import InputError
from ..base import Competition
from ..spec import SpecError
from .common import Run

FIELDS = ("shots", "context")


@dataclass
class Settings:
    """The `generate_text:` block of a spec."""

    target: str  # the labelled file's column holding the reference text
    output: str  # the submission column
    max_new_tokens: int = 32
    stop: list = field(default_factory=list)  # a generation ends at the first of these strings
    strip_prefix: str | None = None  # a regex (case-insensitive) removed from the start of a generation
    strip_quotes: bool = False  # quotes around a generation removed


def check_settings(spec, s: Settings) -> None:
    if s.output not in spec.submission:
        raise SpecError(spec.path, "generate_text.output", f"{s.output!r} is not a submission column")
    if s.output not in spec.fallback or not str(spec.fallback[s.output]).strip():
        raise SpecError(spec.path, "fallback", f"a generated column needs a non-empty fallback text for {s.output!r}")
    if s.strip_prefix:
        try:
            re.compile(s.strip_prefix)
        except re.error as exc:
            raise SpecError(spec.path, "generate_text.strip_prefix", f"not a regex: {exc}") from None
    if not isinstance(s.max_new_tokens, int) or s.max_new_tokens < 1:
        raise SpecError(spec.path, "generate_text.max_new_tokens", f"a positive integer, got {s.max_new_tokens!r}")


class Task(Competition):
    """A competition scored on generated text (Prompt Recovery)."""

    kind = "generate_text"
    task = "generate"

    def __init__(self, spec, settings: Settings):
        super().__init__(spec, settings)
        self.max_new_tokens, self.stop = settings.max_new_tokens, tuple(settings.stop)
        self.mean_text = str(spec.fallback[settings.output])

    def completions(self, df) -> list[str]:
        """The reference text per row."""
        return df[self.settings.target].tolist()

    def clean(self, text: str | None) -> str:
        """A generation tidied (prefix and quotes stripped, as the spec says); empty or missing -> the fallback."""
        if text is None:
            return self.mean_text
        s = self.settings
        if s.strip_prefix:
            text = re.sub(s.strip_prefix, "", text.strip(), flags=re.I)
        text = text.strip()
        if s.strip_quotes:
            text = text.strip('"').strip("'").strip()
        return text if text else self.mean_text

    def work(self, model, tokenizer, df, run: Run):
        generation_task = run.tasks().generation_task
        extra = dict(run.extra, **({"context": run.context} if run.context else {}))
        return generation_task(
            model, tokenizer, self.examples(df, tokenizer, run.max_length, run.shots, **extra),
            max_new_tokens=run.max_new_tokens or self.max_new_tokens, stop=list(self.stop), max_length=run.max_length,
        )  # fmt: skip

    def assemble(self, df, results: list, data_dir: str = "."):
        return list(results)

    def to_submission(self, df, texts):
        return self.frame(df[self.id_column], {self.settings.output: [self.clean(t) for t in texts]}, df)

    def with_mean_text(self, sub, mean: str, append: bool = False):
        """The submission with `mean` (an optimised mean prompt) as the fallback row, and appended to every
        model prediction when `append` (Prompt Recovery's winners concatenated guess and mean prompt)."""
        sub, col = sub.copy(), self.settings.output
        is_fallback = sub[col] == self.mean_text
        if append:
            sub.loc[~is_fallback, col] = sub.loc[~is_fallback, col] + " " + mean
        sub.loc[is_fallback, col] = mean
        return sub

    @property
    def scores_with_model(self) -> bool:
        return self.spec.metric == "perplexity"

    def evaluate(self, model, tokenizer, df, run, **run_kw) -> float:
        """Metric 'perplexity': the mean per-example perplexity of the reference texts given the prompts
        (what instruction tuning is scored by); else predict and score."""
        if self.spec.metric != "perplexity":
            return super().evaluate(model, tokenizer, df, run, **run_kw)
        from ...infer import perplexity
        from ...metrics import perplexity as mean_perplexity

        prompts = self.examples(df, tokenizer, run.max_length, run.shots, **run.extra)
        nlls, _ = perplexity(model, tokenizer, prompts, self.completions(df), max_length=run.max_length, **run_kw)
        return mean_perplexity([x for x in nlls if x is not None])

    def check_row(self, row):
        """A text must not be blank (Kaggle errors on null answers)."""
        return None if str(row[self.settings.output]).strip() else f"empty {self.settings.output}"

    def score(self, sub, truth, embed=None, **_):
        """SCS (mean cos^3 of embeddings; `embed` maps texts -> (N, D)), chrF, BLEU or exact match."""
        from ...metrics import accuracy, bleu, chrf, scs_texts

        sub = self.aligned(sub, truth)
        preds, refs = sub[self.settings.output].tolist(), truth[self.settings.target].tolist()
        metric = self.spec.metric
        if metric == "scs":
            if embed is None:
                from ...embed import scorer

                embed = scorer()
            return scs_texts(preds, refs, embed)
        if metric in ("chrf", "bleu"):
            return (chrf if metric == "chrf" else bleu)(preds, refs)
        if metric in ("exact", "accuracy"):
            return accuracy(preds, refs)
        if metric == "perplexity":
            raise InputError(self.spec.path, "perplexity is measured with the model: kaggle-kit perplexity")
        raise InputError(self.spec.path, f"metric {metric!r} does not score generated text")
