"""LMSYS Chatbot Arena: which of two responses did a person prefer? Three probabilities, log loss."""

from __future__ import annotations

import numpy as np

from ..io import Column, read_csv
from ..metrics import log_loss
from ..templates import render
from ..templates.prompts import LMSYS, LMSYS_TURN
from .base import Competition, aligned

TARGETS = ("winner_model_a", "winner_model_b", "winner_tie")
# Class frequencies of the 57,477-row competition train.csv (a 34.9%, b 34.2%, tie 30.9%): the
# fallback row. Log loss of the prior on balanced data ~1.0986, same as uniform to 3 decimals.
PRIOR = (0.349, 0.342, 0.309)
EMPTY = "(no response)"  # the arena logs a null turn when a model returned nothing


def read(path, labelled: bool = False):
    """test.csv (id, prompt, response_a, response_b: JSON lists) or train.csv (+ model names, winners)."""
    cols = [Column("id", "id"), *(Column(c, "json_list") for c in ("prompt", "response_a", "response_b"))]
    if labelled:
        cols += [Column(t, "binary") for t in TARGETS]
    df = read_csv(path, cols)
    if labelled:
        from ..errors import InputError

        sums = df[list(TARGETS)].sum(axis=1)
        bad = np.flatnonzero(sums.to_numpy() != 1)
        if len(bad):
            raise InputError(
                path,
                "exactly one winner column must be 1",
                row=int(bad[0]) + 1,
                column="winner_model_a",
                expected="one of the three winner columns set",
                got=df.loc[df.index[bad[0]], list(TARGETS)].tolist(),
            )
    return df


def _turns_text(prompts, resp_a, resp_b, tokenizer, budget: int) -> str:
    """Turns from the last backwards while they fit `budget` tokens (seed 001); the last turn always shows."""
    n = max(len(prompts), len(resp_a), len(resp_b))

    def get(lst, i):
        return (lst[i] if i < len(lst) else None) or EMPTY

    blocks, used = [], 0
    for i in range(n - 1, -1, -1):
        block = LMSYS_TURN.format(n=i + 1, prompt=get(prompts, i), a=get(resp_a, i), b=get(resp_b, i))
        cost = len(tokenizer.encode(block, add_special_tokens=False))
        if blocks and used + cost > budget:
            break
        if not blocks and cost > budget:
            block = _shorten(tokenizer, get(prompts, i), get(resp_a, i), get(resp_b, i), budget, i + 1)
            cost = budget
        blocks.append(block)
        used += cost
    return "\n".join(reversed(blocks))


def _shorten(tokenizer, prompt, a, b, budget, n):
    """One turn too long for the budget: keep the head of the prompt and of each response."""
    share = max(budget // 3 - 16, 8)

    def head(text):
        ids = tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= share else tokenizer.decode(ids[:share]) + " ..."

    return LMSYS_TURN.format(n=n, prompt=head(prompt), a=head(a), b=head(b))


def views(df, tokenizer, max_length: int = 2048, n: int = 2, shots: str = "") -> list[tuple[list[str], list[int]]]:
    """A/B swap TTA: the same pair with the responses swapped; its A and B probabilities swap back."""
    if n < 2:
        return []
    swapped = df.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    return [(examples(swapped, tokenizer, max_length), [1, 0, 2])]


def examples(df, tokenizer, max_length: int = 2048, shots: str = "") -> list[str]:
    """One prompt per row: as many last turns as fit, then the A/B/C options."""
    overhead = 96  # tokens of instructions + chat template around the turns
    budget = max(max_length - overhead, 64)
    rows = zip(df["prompt"], df["response_a"], df["response_b"])
    return [render(tokenizer, LMSYS.format(turns=_turns_text(p, a, b, tokenizer, budget))) for p, a, b in rows]


def to_submission(df, probs):
    """id + the three probabilities (rows sum to 1); rows without output get the prior."""
    import pandas as pd

    p = np.asarray(probs, dtype=float).copy()
    # NaN, inf, negative or all-zero rows (a missing output, an fp16 overflow) cannot be normalised: prior
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | ~(p.sum(axis=1) > 0) | ~np.isfinite(p.sum(axis=1))
    p[bad] = PRIOR
    p = p / p.sum(axis=1, keepdims=True)
    out = pd.DataFrame(p, columns=list(TARGETS))
    out.insert(0, "id", df["id"].tolist())
    return out


def fallback(ids):
    """Every row the training prior."""
    import pandas as pd

    out = pd.DataFrame([PRIOR] * len(ids), columns=list(TARGETS))
    out.insert(0, "id", list(ids))
    return out


def score(sub, truth, **_):
    """Kaggle log loss of the submission against the one-hot winner columns, matched by id."""
    sub = aligned(sub, truth)
    y = truth[list(TARGETS)].astype(int).to_numpy().argmax(axis=1)
    return log_loss(y, sub[list(TARGETS)].astype(float).to_numpy())


def check_row(row):
    """Three probabilities in [0, 1] summing to 1 (within 1e-3)."""
    try:
        p = [float(row[t]) for t in TARGETS]
    except ValueError:
        return "a probability is not a number"
    if any(not (0.0 <= x <= 1.0) for x in p):
        return f"probabilities {p} not in [0, 1]"
    if abs(sum(p) - 1.0) > 1e-3:
        return f"probabilities sum to {sum(p):.4f}, not 1"
    return None


def targets(df) -> np.ndarray:
    """0 (model A won), 1 (model B) or 2 (tie) per row."""
    return df[list(TARGETS)].astype(int).to_numpy().argmax(axis=1)


def completions(df) -> list[str]:
    """A (model A), B (model B) or C (tie) per row, as in seed 001's prompt."""
    return ["ABC"[k] for k in targets(df)]


COMPETITION = Competition(
    name="lmsys",
    slug="lmsys-chatbot-arena",
    metric="log loss",
    higher_is_better=False,
    task="choices",
    labels=("A", "B", "C"),
    submission_columns=("id", *TARGETS),
    read=read,
    examples=examples,
    views=views,
    max_views=2,
    to_submission=to_submission,
    fallback=fallback,
    score=score,
    check_row=check_row,
    completions=completions,
    targets=targets,
    group_column="prompt",
)
