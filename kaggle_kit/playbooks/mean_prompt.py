"""Prompt Recovery's mean prompt: one text that maximises the mean sharpened cosine similarity (SCS)
against a set of known rewrite prompts, under the scorer's own embedder.

Top solutions found such a text by search and used it twice: as the fallback row, and appended to each
model prediction. This is a greedy word-level search with restarts: append, then replace, the word that
lifts the mean SCS most, over a vocabulary of the known prompts' words; every candidate set is scored
in one embedding batch.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("kaggle_kit")


@dataclass
class MeanPrompt:
    """The best text found, its mean SCS on the prompts it was fitted to, and the search's trace."""

    text: str
    score: float
    history: list[tuple[str, float]] = field(default_factory=list)


def vocabulary(prompts: list[str], size: int = 200, min_count: int = 2) -> list[str]:
    """The most frequent words of the prompts (case kept, punctuation split off), at most `size`."""
    counts = Counter(w for p in prompts for w in re.findall(r"[\w'-]+|[.,!?:;]", p))
    return [w for w, c in counts.most_common(size) if c >= min_count]


def mean_scs(texts: list[str], targets: np.ndarray, embed: Callable, power: int = 3) -> np.ndarray:
    """Mean over targets of cos(text, target) ** power, for each text (targets: L2-normalised rows)."""
    e = embed(texts)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return (np.clip(e @ targets.T, -1.0, 1.0) ** power).mean(axis=1)


def optimize(
    prompts: list[str],
    embed: Callable,
    *,
    vocab: list[str] | None = None,
    max_words: int = 16,
    restarts: int = 3,
    seed: int = 0,
    start: str = "",
) -> MeanPrompt:
    """Greedy search for the mean prompt of `prompts` under `embed` (texts -> (N, D) array).

    Each restart starts from `start` (first restart) or one random vocabulary word, then repeats: try
    every vocabulary word appended at the end or replacing any word; keep the best if it improves; stop
    at `max_words` words or when nothing improves.
    """
    if not prompts:
        raise ValueError("optimize needs at least one known prompt")
    targets = embed(list(prompts))
    targets = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    vocab = vocab or vocabulary(prompts)
    rng = random.Random(seed)
    best = MeanPrompt("", -np.inf)
    for r in range(restarts):
        words = start.split() if (r == 0 and start) else [rng.choice(vocab)]
        score = float(mean_scs([" ".join(words)], targets, embed)[0])
        while True:
            cands = [words + [v] for v in vocab] if len(words) < max_words else []
            cands += [words[:i] + [v] + words[i + 1 :] for i in range(len(words)) for v in vocab if v != words[i]]
            if not cands:
                break
            scores = mean_scs([" ".join(c) for c in cands], targets, embed)
            k = int(scores.argmax())
            if scores[k] <= score + 1e-6:
                break
            words, score = cands[k], float(scores[k])
            best.history.append((" ".join(words), score))
        log.info("mean prompt restart %d: %.4f %r", r, score, " ".join(words))
        if score > best.score:
            best.text, best.score = " ".join(words), score
    return best
