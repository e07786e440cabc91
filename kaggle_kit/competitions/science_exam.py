"""Kaggle LLM Science Exam: five options A-E, submit the top three letters, scored by MAP@3."""

from __future__ import annotations

import numpy as np

from ..io import Column, read_csv
from ..metrics import map_at_k
from ..templates import PROMPTS, render
from .base import Competition, aligned

LETTERS = ("A", "B", "C", "D", "E")
FALLBACK = "A B C"  # a constant guess; scores ~0.37-0.5 MAP@3 depending on the answer distribution


def read(path, labelled: bool = False):
    """test.csv (id, prompt, A..E) or train.csv (+ answer).

    An option may be empty (Radek's 6k extra set has some); the question may not.
    """
    cols = [Column("id", "id"), Column("prompt"), *(Column(x, "any") for x in LETTERS)]
    if labelled:
        cols.append(Column("answer", "letter"))
    return read_csv(path, cols)


def examples(df, tokenizer, max_length: int = 2048, shots: str = "", context: list[str] | None = None) -> list[str]:
    """One chat-formatted prompt per question, ending where the answer letter goes; `shots` (solved
    examples, see `pick_shots`) go before the question, and each row's retrieved `context` right before it."""
    rows = df[["prompt", *LETTERS]].to_dict("records")
    context = context or [""] * len(rows)
    out = []
    for r, ctx in zip(rows, context):
        lead = shots + (f"Context:\n{ctx}\n\n" if ctx else "")
        # solved examples and passages are text, not format fields
        body = PROMPTS["science_exam"].replace(
            "Question: {prompt}", lead.replace("{", "{{").replace("}", "}}") + "Question: {prompt}"
        )
        out.append(render(tokenizer, body.format(**r)))
    return out


def views(
    df, tokenizer, max_length: int = 2048, n: int = 5, shots: str = "", context: list[str] | None = None
) -> list[tuple[list[str], list[int]]]:
    """Option-permutation TTA: the n-1 cyclic shifts after the original order. With n=5 every option
    appears once at every letter, so a model's preference for a letter position cancels out."""
    out = []
    for k in range(1, n):
        perm = [(j + k) % len(LETTERS) for j in range(len(LETTERS))]  # letter j shows option perm[j]
        shifted = df.copy()
        for j, letter in enumerate(LETTERS):
            shifted[letter] = df[LETTERS[perm[j]]].to_numpy()
        out.append((examples(shifted, tokenizer, max_length, shots, context), perm))
    return out


def queries(df) -> list[str]:
    """Retrieval query per row: the question and its options (the options name what to look up)."""
    return [" ".join([r["prompt"], *(r[x] for x in LETTERS)]) for r in df[["prompt", *LETTERS]].to_dict("records")]


def pick_shots(train, k: int, exclude=(), seed: int = 0) -> str:
    """k solved examples from a labelled frame, balanced over the answer letters (seed 003 found
    unbalanced shots hurt): letters taken in turn A, B, C, D, E, A, ...; ids in `exclude` never used."""
    pool = train[~train["id"].isin(set(exclude))]
    by_letter = {x: pool[pool["answer"] == x].sample(frac=1.0, random_state=seed) for x in LETTERS}
    taken, blocks = {x: 0 for x in LETTERS}, []
    for i in range(k * len(LETTERS)):
        if len(blocks) == k:
            break
        x = LETTERS[i % len(LETTERS)]
        if taken[x] < len(by_letter[x]):
            r = by_letter[x].iloc[taken[x]]
            taken[x] += 1
            opts = "\n".join(f"{y}) {r[y]}" for y in LETTERS)
            blocks.append(f"Question: {r['prompt']}\n{opts}\nAnswer: {x}\n\n")
    return ("Solved examples:\n\n" + "".join(blocks) + "Now this one.\n") if blocks else ""


def to_submission(df, probs):
    """id, prediction = the three most probable letters; rows without probabilities get the fallback."""
    import pandas as pd

    preds = []
    for p in np.asarray(probs, dtype=float):
        if np.isnan(p).any():
            preds.append(FALLBACK)
        else:
            preds.append(" ".join(LETTERS[i] for i in np.argsort(-p, kind="stable")[:3]))
    return pd.DataFrame({"id": df["id"].tolist(), "prediction": preds})


def fallback(ids):
    """The constant submission."""
    import pandas as pd

    return pd.DataFrame({"id": list(ids), "prediction": [FALLBACK] * len(ids)})


def score(sub, truth, **_):
    """MAP@3 of `sub` against truth's answer column, matched by id."""
    sub = aligned(sub, truth)
    return map_at_k(sub["prediction"].tolist(), truth["answer"].tolist(), k=3)


def check_row(row):
    """A prediction is 1-3 space-separated letters A-E."""
    letters = str(row["prediction"]).split()
    if not letters:
        return "empty prediction"
    bad = [x for x in letters if x not in LETTERS]
    return f"letters {bad} not in A-E" if bad else None


def targets(df) -> np.ndarray:
    """Index of the answer letter per row."""
    return np.array([LETTERS.index(x) for x in df["answer"]])


def completions(df) -> list[str]:
    """The answer letter per row."""
    return df["answer"].tolist()


COMPETITION = Competition(
    name="science_exam",
    slug="kaggle-llm-science-exam",
    metric="MAP@3",
    higher_is_better=True,
    task="choices",
    labels=LETTERS,
    submission_columns=("id", "prediction"),
    read=read,
    examples=examples,
    views=views,
    max_views=5,
    shots=pick_shots,
    queries=queries,
    targets=targets,
    to_submission=to_submission,
    fallback=fallback,
    score=score,
    check_row=check_row,
    completions=completions,
    group_column="prompt",
)
