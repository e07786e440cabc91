import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from kaggle_kit.metrics import log_loss, map_at_k, perplexity, sharpened_cosine_rows, sharpened_cosine_similarity


def test_map_at_3_worked_example():
    preds = ["A B C", "B A C", "C B A", "D E A", "E D C"]
    truth = ["A", "A", "A", "B", "C"]
    # 1, 1/2, 1/3, 0, 1/3
    assert map_at_k(preds, truth) == pytest.approx((1 + 0.5 + 1 / 3 + 0 + 1 / 3) / 5)


def test_map_at_3_counts_distinct_labels_only():
    # "A A B": the repeated A is counted once, so B sits at rank 2, not 3
    assert map_at_k(["A A B"], ["B"]) == pytest.approx(0.5)
    # only the first three distinct labels count
    assert map_at_k(["A B C D"], ["D"]) == 0.0
    assert map_at_k([["C", "D"]], ["D"]) == pytest.approx(0.5)


def test_map_rejects_length_mismatch():
    with pytest.raises(ValueError):
        map_at_k(["A"], ["A", "B"])


def test_log_loss_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=500)
    y = rng.integers(0, 3, size=500)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=[0, 1, 2]), abs=1e-9)


def test_log_loss_normalises_rows_and_clips():
    y = [0, 1]
    # rows that do not sum to 1 are divided by their sum
    assert log_loss(y, [[2, 1, 1], [1, 1, 2]]) == pytest.approx(-np.log(0.5) / 2 - np.log(0.25) / 2)
    # a zero probability on the true class is clipped to 1e-15, not infinite
    assert log_loss([0], [[0.0, 0.5, 0.5]]) == pytest.approx(-np.log(1e-15), rel=1e-6)
    assert log_loss([0, 1, 2], np.full((3, 3), 1 / 3)) == pytest.approx(np.log(3))


def test_sharpened_cosine():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [-1.0, 0.0]])
    rows = sharpened_cosine_rows(a, b)
    assert rows == pytest.approx([1.0, 0.0, (1 / np.sqrt(2)) ** 3, -1.0])
    assert sharpened_cosine_similarity(a, b) == pytest.approx(np.mean(rows))


def test_perplexity_is_mean_of_per_example_exp():
    nlls = [[np.log(2), np.log(2)], [np.log(4)]]
    assert perplexity(nlls) == pytest.approx((2 + 4) / 2)


def test_roc_auc_counts_ties_half_and_names_bad_labels():
    from kaggle_kit.metrics import roc_auc

    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.5=0.5 -> half, 0.5>0.1) = 3.5 / 4
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one positive and one negative"):
        roc_auc([1, 1], [0.1, 0.2])


def test_grouped_roc_auc_averages_groups_and_skips_one_class_groups():
    from kaggle_kit.metrics import grouped_roc_auc

    y = [1, 0, 1, 0, 1, 1]
    s = [0.9, 0.1, 0.2, 0.8, 0.5, 0.6]
    g = ["a", "a", "b", "b", "c", "c"]  # a: 1.0, b: 0.0, c: one class only (skipped)
    assert grouped_roc_auc(y, s, g) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no group"):
        grouped_roc_auc([1, 1], [0.1, 0.2], ["a", "b"])


def test_numeric_match_and_accuracy():
    from kaggle_kit.metrics import accuracy, numeric_match

    assert numeric_match(["42", " 7 ", "x", "3.0"], ["42", "8", "1", "3"]) == pytest.approx(0.5)
    assert numeric_match(["1.05"], ["1"], tolerance=0.1) == 1.0
    assert accuracy([" A", "B", "C"], ["A", "B", "D"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 truths"):
        numeric_match(["1", "2"], ["1"])


def test_chrf_and_bleu_are_sacrebleus_corpus_scores():
    from kaggle_kit.metrics import bleu, chrf

    truths = ["the cat sat on the mat", "a quick brown fox jumps"]
    assert chrf(truths, truths) == pytest.approx(100.0)
    assert bleu(truths, truths) == pytest.approx(100.0)
    worse = ["the cat sat on a hat", "a slow brown dog jumps"]
    assert 0 < bleu(worse, truths) < chrf(worse, truths) < 100


def test_temperature_fit_reports_a_solution_on_the_bound():
    from kaggle_kit.metrics import temperature_fit

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    fit = temperature_fit([0, 1, 0, 1], probs)  # every row right: sharper is always better
    assert fit["at_bound"] and "bound" in fit["message"] and fit["temperature"] == pytest.approx(0.05, rel=1e-2)
    fit = temperature_fit([0, 0, 1, 1], probs)  # half wrong: flatter
    assert fit["converged"] and not fit["at_bound"] and fit["temperature"] > 1
