"""Competition metrics with Kaggle's exact definitions. Pure numpy (an embedder is passed in for SCS)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Kaggle's multi-class log loss divides each row by its sum, then replaces p by max(min(p, 1 - 1e-15), 1e-15).
LOG_LOSS_EPS = 1e-15


def map_at_k(predictions: Sequence[str | Sequence[str]], truths: Sequence[str], k: int = 3) -> float:
    """Mean average precision at k for one correct label per row (Science Exam's MAP@3).

    Each prediction is "A B C" or a list of labels. Per row: 1/rank of the first correct label among the
    first k *distinct* labels, 0 if absent. A repeated label is counted once, as Kaggle does.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths")
    if not len(truths):
        raise ValueError("map_at_k of zero rows")
    total = 0.0
    for pred, truth in zip(predictions, truths):
        labels = pred.split() if isinstance(pred, str) else list(pred)
        distinct = list(dict.fromkeys(labels))[:k]
        if truth in distinct:
            total += 1.0 / (distinct.index(truth) + 1)
    return total / len(truths)


def log_loss(y_true: Sequence[int], probs, eps: float = LOG_LOSS_EPS) -> float:
    """Kaggle multi-class log loss: divide each row by its sum, clip to [eps, 1-eps], mean -log p(true).

    `y_true` holds class indices (0..K-1), `probs` is (N, K).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probs must be (N, K) with N={len(y)}, got {p.shape}")
    p = p / p.sum(axis=1, keepdims=True)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def sharpened_cosine_similarity(pred_emb, true_emb, power: int = 3) -> float:
    """Mean over rows of cos(pred, true) ** power (power 3, as Prompt Recovery scored)."""
    return float(np.mean(sharpened_cosine_rows(pred_emb, true_emb, power)))


def sharpened_cosine_rows(pred_emb, true_emb, power: int = 3) -> np.ndarray:
    """Per-row cos ** power between matching rows of two embedding matrices."""
    a = np.asarray(pred_emb, dtype=np.float64)
    b = np.asarray(true_emb, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    return np.clip(cos, -1.0, 1.0) ** power


def scs_texts(
    predictions: Sequence[str], truths: Sequence[str], embed: Callable[[list[str]], np.ndarray], power: int = 3
) -> float:
    """Sharpened cosine similarity of two text lists under `embed` (texts -> (N, D) array)."""
    return sharpened_cosine_similarity(embed(list(predictions)), embed(list(truths)), power)


def perplexity(token_nlls: Sequence[Sequence[float]]) -> float:
    """Seed 003's perplexity: mean over examples of exp(mean token NLL of the output given the prompt)."""
    if not len(token_nlls):
        raise ValueError("perplexity of zero examples")
    per_example = [float(np.exp(np.mean(np.asarray(n, dtype=np.float64)))) for n in token_nlls]
    return float(np.mean(per_example))


def apply_temperature(probs, t: float) -> np.ndarray:
    """softmax(log(probs) / t) per row: probabilities re-tempered as if the logits were divided by t."""
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_LOSS_EPS, 1.0)) / t
    q = np.exp(z - z.max(axis=1, keepdims=True))
    return q / q.sum(axis=1, keepdims=True)


def fit_temperature(y_true: Sequence[int], probs, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature T minimising log loss of softmax(log(probs) / T): a calibration fitted on a
    validation split (seed 001 fixed 1.03 by hand). Golden-section search over log T; T > 1 softens."""
    p = np.asarray(probs, dtype=np.float64)

    def loss(log_t: float) -> float:
        return log_loss(y_true, apply_temperature(p, np.exp(log_t)))

    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(80):  # one new loss per step: the other inner point is kept
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    return float(np.exp((a + b) / 2))
