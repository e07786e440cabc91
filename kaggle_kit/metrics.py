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
    """The NTU ADL homework's perplexity: mean over examples of exp(mean token NLL of the output given the prompt)."""
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
    """The temperature T minimising log loss of softmax(log(probs) / T) (a calibration fitted on a
    validation split); T > 1 softens. See temperature_fit for whether the search converged."""
    return temperature_fit(y_true, probs, lo, hi)["temperature"]


def temperature_fit(y_true: Sequence[int], probs, lo: float = 0.05, hi: float = 20.0) -> dict:
    """scipy's bounded scalar minimiser over log T in [log lo, log hi]: {'temperature', 'converged',
    'at_bound', 'message'}. A solution on a bound means the best T may lie outside it: said, not hidden."""
    from scipy.optimize import minimize_scalar

    p = np.asarray(probs, dtype=np.float64)
    res = minimize_scalar(
        lambda log_t: log_loss(y_true, apply_temperature(p, np.exp(log_t))),
        bounds=(np.log(lo), np.log(hi)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    t = float(np.exp(res.x))
    at_bound = bool(min(t / lo, hi / t) < 1.0 + 1e-3)
    message = str(res.message)
    if at_bound:
        message = f"T={t:.3g} is on the search bound [{lo}, {hi}]: the best temperature may lie outside it"
    return {"temperature": t, "converged": bool(res.success), "at_bound": at_bound, "message": message}


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve of binary labels (0/1) by scores: the probability that a random positive
    scores above a random negative, ties counting half (sklearn's roc_auc_score, with clear errors)."""
    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) != len(s):
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos + neg != len(y):
        raise ValueError("roc_auc needs labels 0 and 1")
    if not pos or not neg:
        raise ValueError("roc_auc needs at least one positive and one negative row")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def grouped_roc_auc(y_true, scores, groups) -> float:
    """Mean of the per-group ROC AUC (Jigsaw-style column-averaged AUC); groups with one class skipped."""
    y, s, g = np.asarray(y_true), np.asarray(scores, dtype=np.float64), np.asarray(groups)
    values = [roc_auc(y[g == k], s[g == k]) for k in dict.fromkeys(g.tolist()) if len(set(y[g == k])) == 2]
    if not values:
        raise ValueError("no group holds both a positive and a negative row")
    return float(np.mean(values))


def accuracy(predictions: Sequence, truths: Sequence) -> float:
    """Share of rows whose prediction equals the truth (as text, stripped)."""
    if len(predictions) != len(truths) or not len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths")
    return float(np.mean([str(p).strip() == str(t).strip() for p, t in zip(predictions, truths)]))


def numeric_match(predictions: Sequence, truths: Sequence, tolerance: float = 0.0) -> float:
    """Share of rows whose prediction is a number within `tolerance` of the truth (AIMO: exact integers)."""

    def number(x):
        try:
            return float(str(x).strip())
        except ValueError:
            return None

    if len(predictions) != len(truths) or not len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths")
    hits = []
    for p, t in zip(predictions, truths):
        a, b = number(p), number(t)
        hits.append(a is not None and b is not None and abs(a - b) <= tolerance)
    return float(np.mean(hits))


def chrf(predictions: Sequence[str], truths: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), [list(truths)]).score)


def bleu(predictions: Sequence[str], truths: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(truths)]).score)
