"""generate_answer: generate a solution, extract its answer (the last \\boxed{}, the last number, or a
regex), and with `samples` > 1 vote: self-consistency over sampled solutions, the most frequent answer
wins (AIMO's winners sampled many attempts per problem and took the majority).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ...errors import InputError
from ..base import Competition
from ..spec import SpecError
from .common import Run

FIELDS = ("shots", "context")
NUMBER = r"-?\d+(?:\.\d+)?"


@dataclass
class Settings:
    """The `generate_answer:` block of a spec."""

    answer: str  # the labelled file's column holding the right answer
    output: str  # the submission column
    extract: str = "boxed"  # 'boxed' (the last \\boxed{...}), 'last_number', or a regex whose group 1 is the answer
    integer: bool = True  # answers are integers (a float answer is rounded; non-numbers are no answer)
    modulo: int | None = None  # answers taken modulo this (AIMO: 1000)
    samples: int = 1  # solutions per problem; above 1 they are sampled and the answers voted on
    temperature: float = 0.7  # sampling temperature when samples > 1
    top_p: float = 0.95
    max_new_tokens: int = 512
    tolerance: float = 0.0  # the metric 'numeric': how far a numeric answer may be from the truth


def check_settings(spec, s: Settings) -> None:
    if s.output not in spec.submission:
        raise SpecError(spec.path, "generate_answer.output", f"{s.output!r} is not a submission column")
    if s.extract not in ("boxed", "last_number"):
        try:
            if re.compile(s.extract).groups < 1:
                raise SpecError(spec.path, "generate_answer.extract", "a regex needs one group: the answer")
        except re.error as exc:
            raise SpecError(spec.path, "generate_answer.extract", f"'boxed', 'last_number' or a regex: {exc}") from None
    for name in ("samples", "max_new_tokens"):
        if not isinstance(getattr(s, name), int) or getattr(s, name) < 1:
            raise SpecError(spec.path, f"generate_answer.{name}", f"a positive integer, got {getattr(s, name)!r}")


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} in `text` (nested braces kept), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


class Task(Competition):
    """A competition scored on extracted answers (AI Mathematical Olympiad)."""

    kind = "generate_answer"
    task = "generate"

    def __init__(self, spec, settings: Settings):
        super().__init__(spec, settings)
        self.max_new_tokens = settings.max_new_tokens

    def extract(self, text: str | None) -> str | None:
        """The answer in one generated solution, normalised (integer, modulo), or None."""
        if not text:
            return None
        s = self.settings
        if s.extract == "boxed":
            found = last_boxed(text)
        elif s.extract == "last_number":
            numbers = re.findall(NUMBER, text.replace(",", ""))
            found = numbers[-1] if numbers else None
        else:
            match = list(re.finditer(s.extract, text))
            found = match[-1].group(1) if match else None
        return None if found is None else self.normalise(found)

    def normalise(self, value) -> str | None:
        s = self.settings
        text = str(value).strip().replace(",", "")
        if not s.integer:
            return text or None
        numbers = re.findall(NUMBER, text)
        if len(numbers) != 1:
            return None
        n = round(float(numbers[0]))
        return str(n % s.modulo if s.modulo else n)

    def vote(self, texts) -> str | None:
        """The most frequent answer among a row's solutions (ties: the one seen first), or None."""
        answers = [a for a in (self.extract(t) for t in ([texts] if isinstance(texts, str) else texts or [])) if a]
        if not answers:
            return None
        counts = Counter(answers)
        return max(dict.fromkeys(answers), key=lambda a: counts[a])

    def completions(self, df) -> list[str]:
        """A short solution ending in the boxed answer (AIMO's train sets hold answers only)."""
        return [f"The answer is \\boxed{{{a}}}." for a in df[self.settings.answer]]

    def work(self, model, tokenizer, df, run: Run):
        generation_task = run.tasks().generation_task
        s = self.settings
        extra = dict(run.extra, **({"context": run.context} if run.context else {}))
        return generation_task(
            model, tokenizer, self.examples(df, tokenizer, run.max_length, run.shots, **extra),
            max_new_tokens=run.max_new_tokens or s.max_new_tokens, max_length=run.max_length,
            samples=s.samples, temperature=s.temperature, top_p=s.top_p,
        )  # fmt: skip

    def assemble(self, df, results: list, data_dir: str = "."):
        """Per row its solutions (one text, or the sampled list; None where not reached)."""
        return list(results)

    def to_submission(self, df, outputs):
        fallback = self.fallback_row()[self.settings.output]
        answers = [self.vote(o) if o is not None else None for o in outputs]
        return self.frame(
            df[self.id_column], {self.settings.output: [a if a is not None else fallback for a in answers]}, df
        )

    def fallback_row(self) -> dict:
        return {self.settings.output: "0", **{k: str(v) for k, v in self.spec.fallback.items()}}

    def check_row(self, row):
        v = str(row[self.settings.output]).strip()
        if not v:
            return "empty answer"
        return None if not self.settings.integer or re.fullmatch(r"-?\d+", v) else f"{v!r} is not an integer"

    def score(self, sub, truth, **_):
        """Share of exact (or, metric 'numeric', within tolerance) answers, matched by id."""
        from ...metrics import accuracy, numeric_match

        sub = self.aligned(sub, truth)
        preds = sub[self.settings.output].tolist()
        truths = [self.normalise(t) or str(t) for t in truth[self.settings.answer]]
        if self.spec.metric.startswith("numeric"):
            return numeric_match(preds, truths, self.settings.tolerance)
        if self.spec.metric in ("accuracy", "exact"):
            return accuracy(preds, truths)
        raise InputError(self.spec.path, f"metric {self.spec.metric!r} does not score answers")
