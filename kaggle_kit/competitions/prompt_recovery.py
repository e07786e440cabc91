"""LLM Prompt Recovery: recover the rewrite instruction; sharpened cosine similarity of embeddings."""

from __future__ import annotations

import re

from ..io import Column, read_csv
from ..templates import PROMPTS, render
from .base import Competition, aligned

# A constant prompt of the kind that scored ~0.60 on the leaderboard; the fallback for every row.
MEAN_PROMPT = (
    "Please improve this text using the writing style with maintaining the original meaning but altering the tone."
)
MAX_TEXT_CHARS = 1500  # ~375 tokens each for original and rewritten text


def read(path, labelled: bool = False):
    """test.csv (id, original_text, rewritten_text) or train.csv (+ rewrite_prompt)."""
    cols = [Column("id", "id"), Column("original_text"), Column("rewritten_text")]
    if labelled:
        cols.append(Column("rewrite_prompt"))
    return read_csv(path, cols)


def examples(df, tokenizer, max_length: int = 2048, shots: str = "") -> list[str]:
    """One chat prompt per row; each text cut to MAX_TEXT_CHARS so the instruction is never truncated."""
    body = PROMPTS["prompt_recovery"]
    return [
        render(tokenizer, body.format(original_text=o[:MAX_TEXT_CHARS], rewritten_text=r[:MAX_TEXT_CHARS]))
        for o, r in zip(df["original_text"], df["rewritten_text"])
    ]


def clean(text: str | None) -> str:
    """A generated instruction tidied to one line; empty or missing -> the mean prompt."""
    if text is None:
        return MEAN_PROMPT
    text = re.sub(r"^\s*(instruction|prompt)\s*:\s*", "", text.strip(), flags=re.I)
    text = text.strip().strip('"').strip("'").strip()
    return text if text else MEAN_PROMPT


def to_submission(df, texts):
    """id, rewrite_prompt (never empty)."""
    import pandas as pd

    return pd.DataFrame({"id": df["id"].tolist(), "rewrite_prompt": [clean(t) for t in texts]})


def with_mean_prompt(sub, mean: str, append: bool = False):
    """The submission with `mean` (an optimised mean prompt) as the fallback row, and appended to every
    model prediction when `append` (winners concatenated their guess with the optimised text)."""
    sub = sub.copy()
    is_fallback = sub["rewrite_prompt"] == MEAN_PROMPT
    if append:
        sub.loc[~is_fallback, "rewrite_prompt"] = sub.loc[~is_fallback, "rewrite_prompt"] + " " + mean
    sub.loc[is_fallback, "rewrite_prompt"] = mean
    return sub


def fallback(ids):
    """Every row the mean prompt."""
    import pandas as pd

    return pd.DataFrame({"id": list(ids), "rewrite_prompt": [MEAN_PROMPT] * len(ids)})


def score(sub, truth, embed=None, **_):
    """Mean cos^3 between embeddings of predicted and true prompts; `embed` maps texts -> (N, D)."""
    from ..metrics import scs_texts

    if embed is None:
        from ..embed import scorer

        embed = scorer()
    sub = aligned(sub, truth)
    return scs_texts(sub["rewrite_prompt"].tolist(), truth["rewrite_prompt"].tolist(), embed)


def check_row(row):
    """rewrite_prompt must not be blank (Kaggle errors on null answers)."""
    return None if str(row["rewrite_prompt"]).strip() else "empty rewrite_prompt"


def completions(df) -> list[str]:
    """The true rewrite prompt per row."""
    return df["rewrite_prompt"].tolist()


COMPETITION = Competition(
    name="prompt_recovery",
    slug="llm-prompt-recovery",
    metric="SCS",
    higher_is_better=True,
    task="generate",
    labels=(),
    submission_columns=("id", "rewrite_prompt"),
    read=read,
    examples=examples,
    to_submission=to_submission,
    fallback=fallback,
    score=score,
    check_row=check_row,
    completions=completions,
    group_column="original_text",
    max_new_tokens=32,
    stop=("\n",),
)
